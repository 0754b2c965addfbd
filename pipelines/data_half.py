"""The data half every pipeline shares, added into the caller's own ``@dsl.pipeline``.

resolve config → start the MLflow run → plan the shards → generate or ingest, then validate, per shard under
``dsl.ParallelFor`` (the plan owns the fan-out) → merge with the validation report. The model half after it
is each pipeline's (the shared LightGBM one in ``pipelines.training``, a use case's own in e.g.
``pipelines.segmentation``).

A plain function that creates the tasks inside the caller's pipeline context rather than a nested
``@dsl.pipeline``: the tasks keep their names and the compiled YAML stays one flat DAG per pipeline, which
kfp.local runs as it runs any other pipeline.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import components as c
from kfp import dsl

from clinrisk.config import StepResources

# kfp.local ignores display names and resources (they are for the Kubeflow UI and the cluster) and would
# say so once per task.
LOCAL_NOOP_WARNING = r"Task '.*': settings \[.*\] have no effect in the current local runner"


@dataclass(frozen=True)
class StepLook:
    """What the Kubeflow UI shows for each step and the pod resources it gets (both fixed at compile time)."""

    display_names: Mapping[str, str]
    resources: Mapping[str, StepResources]

    def __call__(self, task: Any, step: str, resources_of: str | None = None) -> Any:
        """Give ``task`` its display name and the requests and limits of ``resources_of`` (default: the
        step's own); returns the task."""
        res = self.resources[resources_of or step]
        cpu_limit, memory_limit = res.limits()
        task.set_display_name(self.display_names[step])
        task.set_cpu_request(res.cpu).set_cpu_limit(cpu_limit)
        task.set_memory_request(res.memory).set_memory_limit(memory_limit)
        return task


def run_form(
    usecase: str,
    config_name: str,
    config_yaml: str,
    overrides: list[str],
    n_patients: int,
    seed: int,
    run_name: str,
) -> dict[str, Any]:
    """The pipeline parameters that pick the run's config: resolve_config's and the exit task's inputs."""
    return {
        "usecase": usecase,
        "config_name": config_name,
        "config_yaml": config_yaml,
        "overrides": overrides,
        "n_patients": n_patients,
        "seed": seed,
        "run_name": run_name,
    }


def close_run_on_exit(form: Mapping[str, Any], look: StepLook) -> Any:
    """The exit task that closes the MLflow run a failed step left RUNNING (never cached).

    It may depend on no other task, only on pipeline parameters: the pipeline job id is the key that ties
    this DAG run to its MLflow run (start_tracking tags it, the exit task finds it)."""
    finalize = look(
        c.finalize_tracking(**form, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), "finalize_tracking"
    )
    finalize.set_caching_options(False)
    return finalize


@dataclass(frozen=True)
class DataHalf:
    """The data half's handles the model half wires to."""

    config: Any  # the resolved config artifact
    tracking: Any  # start_tracking; its ``.output`` is the MLflow run id
    plan: Any  # plan_generation; outputs ``Output`` (the shard indices) and ``plan``
    data: Any  # merge_data; outputs ``raw``, ``validated`` and ``validation_report``


def add_data_half(
    form: Mapping[str, Any],
    look: StepLook,
    parallelism: int,
    loop_name: str,
    task_groups: int = 0,
    fuse_steps: bool = False,
) -> DataHalf:
    """Add the shared data tasks to the pipeline being defined (call it inside the ``dsl.ExitHandler``).

    ``task_groups`` 0 fans out one task per shard (a cluster's default); N > 0 lets the plan group the
    shards into at most N tasks (the local runner, where every task is a fresh Python process).
    ``fuse_steps`` generates and validates each shard (group) in one task, ``generate_validate_shard``."""
    config = look(c.resolve_config(**form), "resolve_config").outputs["config"]
    tracking = look(
        c.start_tracking(config=config, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), "start_tracking"
    )
    # Steps with side effects outside their outputs (MLflow run, registry, InferenceService) are never
    # served from the cache; the deterministic data/feature/model steps are.
    tracking.set_caching_options(False)
    # The plan owns the fan-out: every ParallelFor iterates over the shard indices it returns.
    plan = look(c.plan_generation(config=config, task_groups=task_groups), "plan_generation")
    with dsl.ParallelFor(plan.outputs["Output"], parallelism=parallelism, name=loop_name) as shard:
        if fuse_steps:
            gen = val = look(
                c.generate_validate_shard(config=config, plan=plan.outputs["plan"], shard=shard),
                "generate_validate_shard",
                resources_of="validate_shard",
            )
        else:
            gen = look(
                c.generate_shard(config=config, plan=plan.outputs["plan"], shard=shard), "generate_shard"
            )
            val = look(
                c.validate_shard(config=config, raw_shard=gen.outputs["raw_shard"], shard=shard),
                "validate_shard",
            )
    data = look(
        c.merge_data(
            config=config,
            plan=plan.outputs["plan"],
            raw_shards=dsl.Collected(gen.outputs["raw_shard"]),
            validated_shards=dsl.Collected(val.outputs["validated_shard"]),
        ),
        "merge_data",
    )
    return DataHalf(config=config, tracking=tracking, plan=plan, data=data)
