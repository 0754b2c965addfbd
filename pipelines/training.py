"""The clinrisk training pipeline: one DAG for kfp.local (subprocess or Docker) and Kubeflow Pipelines.

generate/validate and features fan out per shard with ``dsl.ParallelFor`` (one pod per shard on a cluster)
and are collected with ``dsl.Collected``; then select → train → evaluate → register (→ canary deploy when
``deploy`` is true). The whole DAG sits in a ``dsl.ExitHandler`` whose exit task closes the MLflow run a
failed step left RUNNING. Every task, loop and condition has a display name for the
Kubeflow UI, and every task the CPU/memory of ``pipeline.resources.<step>`` (fixed at compile time). This
module only wires inputs to outputs.
"""

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import components as c
from kfp import dsl

from clinrisk.config import PipelineConfig, StepResources

PIPELINE_NAME = "clinrisk-training"
_LOCAL_NOOP_WARNING = r"Task '.*': settings \[.*\] have no effect in the current local runner"

# What the Kubeflow UI shows for each task (keyed by the component's name).
DISPLAY_NAMES = {
    "resolve_config": "Resolve config",
    "start_tracking": "Start MLflow run",
    "plan_generation": "Plan shards",
    "generate_shard": "Generate shard",
    "validate_shard": "Validate shard",
    "merge_data": "Merge data + validation report",
    "fit_feature_spec": "Fit feature spec",
    "build_features_shard": "Build features (shard)",
    "merge_features": "Merge features",
    "select_features": "Select features",
    "train": "Train + calibrate",
    "evaluate": "Evaluate on test split",
    "register": "Register challenger",
    "deploy_canary": "Canary deploy",
    "finalize_tracking": "Close MLflow run",
}
GROUP_NAMES = {
    "exit_handler": "Training (MLflow run closed on exit)",
    "generate_loop": "Generate + validate each shard",
    "features_loop": "Build features for each shard",
    "deploy_condition": "Deploy requested",
}


def _ui(task: Any, step: str, resources: Mapping[str, StepResources]) -> Any:
    """Give ``task`` its display name and the step's requests and limits; returns the task."""
    res = resources[step]
    cpu_limit, memory_limit = res.limits()
    task.set_display_name(DISPLAY_NAMES[step])
    task.set_cpu_request(res.cpu).set_cpu_limit(cpu_limit)
    task.set_memory_request(res.memory).set_memory_limit(memory_limit)
    return task


def build_training_pipeline(
    parallelism: int = 2, resources: Mapping[str, StepResources] | None = None
) -> Callable[..., Any]:
    """Return the pipeline function; ``parallelism`` caps concurrent shard tasks and ``resources`` sets
    each step's pod resources (both compile-time in KFP; ``resources`` defaults to the config's defaults)."""
    res = dict(resources) if resources is not None else PipelineConfig().resources
    # Display names and resources are for the Kubeflow UI and the cluster; kfp.local ignores them and would
    # say so once per task.
    warnings.filterwarnings("ignore", message=_LOCAL_NOOP_WARNING, category=UserWarning)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="A use case's data → validated data → features → LightGBM → MLflow registry (→ canary)",
    )
    def clinrisk_training(
        usecase: str = "clinical",
        config_name: str = "default",  # configs/<usecase>/<config_name>.yaml (or configs/<name>.yaml)
        n_patients: int = 0,  # 0 = the config's generate.n_patients
        seed: int = -1,  # -1 = the config's run.seed
        run_name: str = "",  # "" = the config's run.name
        overrides: list[str] = [],  # noqa: B006 - KFP pipeline parameters take literal defaults
        config_yaml: str = "",  # optional: the whole config as YAML; replaces the named file
        deploy: bool = False,
        inference_service: str = "",  # "" = the config's serving.model_name (the use case's)
        namespace: str = "",  # "" = the config's serving.namespace
        canary_percent: int = 10,
    ) -> str:
        form = {
            "usecase": usecase,
            "config_name": config_name,
            "config_yaml": config_yaml,
            "overrides": overrides,
            "n_patients": n_patients,
            "seed": seed,
            "run_name": run_name,
        }
        # The one key that ties this DAG run to its MLflow run (start_tracking tags it, the exit task
        # finds it): an exit task may depend on no other task, only on pipeline parameters.
        run_key = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        finalize = _ui(c.finalize_tracking(**form, kfp_run_id=run_key), "finalize_tracking", res)
        finalize.set_caching_options(False)

        with dsl.ExitHandler(finalize, name=GROUP_NAMES["exit_handler"]):
            config = _ui(c.resolve_config(**form), "resolve_config", res).outputs["config"]
            tracking = _ui(c.start_tracking(config=config, kfp_run_id=run_key), "start_tracking", res)
            # Steps with side effects outside their outputs (MLflow run, registry, InferenceService) are
            # never served from the cache; the deterministic data/feature/model steps are.
            tracking.set_caching_options(False)
            # The plan owns the fan-out: both ParallelFors iterate over the shard indices it returns.
            plan = _ui(c.plan_generation(config=config), "plan_generation", res)

            with dsl.ParallelFor(
                plan.outputs["Output"], parallelism=parallelism, name=GROUP_NAMES["generate_loop"]
            ) as shard:
                gen = _ui(
                    c.generate_shard(config=config, plan=plan.outputs["plan"], shard=shard),
                    "generate_shard",
                    res,
                )
                val = _ui(
                    c.validate_shard(config=config, raw_shard=gen.outputs["raw_shard"], shard=shard),
                    "validate_shard",
                    res,
                )

            data = _ui(
                c.merge_data(
                    config=config,
                    plan=plan.outputs["plan"],
                    raw_shards=dsl.Collected(gen.outputs["raw_shard"]),
                    validated_shards=dsl.Collected(val.outputs["validated_shard"]),
                ),
                "merge_data",
                res,
            )
            spec = _ui(
                c.fit_feature_spec(config=config, validated=data.outputs["validated"]),
                "fit_feature_spec",
                res,
            )

            with dsl.ParallelFor(
                plan.outputs["Output"], parallelism=parallelism, name=GROUP_NAMES["features_loop"]
            ) as shard:
                feat = _ui(
                    c.build_features_shard(
                        config=config,
                        feature_spec=spec.outputs["feature_spec"],
                        validated=data.outputs["validated"],
                        raw=data.outputs["raw"],
                        shard=shard,
                    ),
                    "build_features_shard",
                    res,
                )

            features = _ui(
                c.merge_features(
                    config=config,
                    feature_spec=spec.outputs["feature_spec"],
                    features_shards=dsl.Collected(feat.outputs["features_shard"]),
                ),
                "merge_features",
                res,
            )
            selection = _ui(
                c.select_features(config=config, features=features.outputs["features"]),
                "select_features",
                res,
            )
            trained = _ui(
                c.train(
                    config=config,
                    features=features.outputs["features"],
                    selection=selection.outputs["selection"],
                    raw=data.outputs["raw"],
                    mlflow_run_id=tracking.output,
                ),
                "train",
                res,
            )
            evaluated = _ui(
                c.evaluate(
                    config=config,
                    bundle=trained.outputs["bundle"],
                    features=features.outputs["features"],
                    mlflow_run_id=tracking.output,
                ),
                "evaluate",
                res,
            )
            registered = _ui(
                c.register(
                    config=config,
                    bundle=trained.outputs["bundle"],
                    evaluation=evaluated.outputs["evaluation"],
                    validation_report=data.outputs["validation_report"],
                    validated=data.outputs["validated"],
                    mlflow_run_id=tracking.output,
                ),
                "register",
                res,
            )
            registered.set_caching_options(False)
            # KFP condition expression, not a Python comparison.
            with dsl.If(deploy == True, name=GROUP_NAMES["deploy_condition"]):  # noqa: E712
                _ui(
                    c.deploy_canary(
                        config=config,
                        model_uri=registered.output,
                        inference_service=inference_service,
                        namespace=namespace,
                        percent=canary_percent,
                    ),
                    "deploy_canary",
                    res,
                ).set_caching_options(False)
        # Outputs may only come from the top level, where the exit task alone is: it returns the model URI
        # register recorded on the MLflow run.
        return finalize.output

    return clinrisk_training
