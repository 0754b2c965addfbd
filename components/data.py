"""Components: plan, generate and validate one shard, and merge the shards into datasets."""

from kfp import dsl

from clinrisk.images import pipeline_image


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def plan_generation(
    config: dsl.Input[dsl.Artifact], plan: dsl.Output[dsl.Artifact], task_groups: int = 0
) -> list[int]:
    """Calibrate the onset intercept and fix the patient blocks of every shard; return the fan-out indices
    (the plan owns the fan-out): the shards, or with ``task_groups`` N > 0 at most N groups of shards."""
    from clinrisk.steps import plan_generation_step

    return plan_generation_step(config.path, plan.path, int(task_groups))


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def generate_shard(
    config: dsl.Input[dsl.Artifact],
    plan: dsl.Input[dsl.Artifact],
    shard: int,
    raw_shard: dsl.Output[dsl.Dataset],
) -> None:
    """Generate one shard of observed + truth patient-years."""
    from clinrisk.steps import generate_shard_step

    generate_shard_step(config.path, plan.path, int(shard), raw_shard.path)


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def validate_shard(
    config: dsl.Input[dsl.Artifact],
    raw_shard: dsl.Input[dsl.Dataset],
    shard: int,
    validated_shard: dsl.Output[dsl.Dataset],
) -> None:
    """Validate one raw shard: passing rows, quarantined rows with reasons, per-shard stats."""
    from clinrisk.steps import validate_shard_step

    validate_shard_step(config.path, raw_shard.path, int(shard), validated_shard.path)


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def generate_validate_shard(
    config: dsl.Input[dsl.Artifact],
    plan: dsl.Input[dsl.Artifact],
    shard: int,
    raw_shard: dsl.Output[dsl.Dataset],
    validated_shard: dsl.Output[dsl.Dataset],
) -> None:
    """generate_shard then validate_shard in one process (the local runner's shape,
    ``pipeline.fuse_local_steps``): the same two step functions and outputs, one start-up."""
    from clinrisk.steps import generate_shard_step, validate_shard_step

    generate_shard_step(config.path, plan.path, int(shard), raw_shard.path)
    validate_shard_step(config.path, raw_shard.path, int(shard), validated_shard.path)


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def merge_data(
    config: dsl.Input[dsl.Artifact],
    plan: dsl.Input[dsl.Artifact],
    raw_shards: dsl.Input[list[dsl.Dataset]],
    validated_shards: dsl.Input[list[dsl.Dataset]],
    raw: dsl.Output[dsl.Dataset],
    validated: dsl.Output[dsl.Dataset],
    validation_report: dsl.Output[dsl.Markdown],
    validation_metrics: dsl.Output[dsl.Metrics],
) -> None:
    """Collect the shards into the raw and validated datasets with their manifest and validation report."""
    from clinrisk.steps import merge_data_step

    merge_data_step(
        config.path,
        plan.path,
        [a.path for a in raw_shards],
        [a.path for a in validated_shards],
        raw.path,
        validated.path,
        validation_report.path,
        validation_metrics.log_metric,
    )
