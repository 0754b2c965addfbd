"""The clinrisk training pipeline: one DAG for kfp.local (subprocess or Docker) and Kubeflow Pipelines.

generate/validate and features fan out per shard with ``dsl.ParallelFor`` (one pod per shard on a cluster)
and are collected with ``dsl.Collected``; then select → train → evaluate → register (→ canary deploy when
``deploy`` is true). The whole DAG sits in a ``dsl.ExitHandler`` whose exit task closes the MLflow run a
failed step left RUNNING. Every task, loop and condition has a display name for the
Kubeflow UI, and every task the CPU/memory of ``pipeline.resources.<step>`` (fixed at compile time); the
train task's pod carries the label the Dask NetworkPolicy admits (kfp-kubernetes). This
module only wires inputs to outputs; the data half (config, MLflow run, plan, generate + validate per
shard, merge) is :func:`pipelines.data_half.add_data_half`, shared with every use case's pipeline.
"""

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import components as c
from kfp import dsl, kubernetes

from clinrisk.config import PipelineConfig, StepResources
from clinrisk.dask_k8s import CLIENT_LABEL
from pipelines.data_half import LOCAL_NOOP_WARNING, StepLook, add_data_half, close_run_on_exit, run_form

PIPELINE_NAME = "clinrisk-training"

# What the Kubeflow UI shows for each task (keyed by the component's name).
DISPLAY_NAMES = {
    "resolve_config": "Resolve config",
    "start_tracking": "Start MLflow run",
    "plan_generation": "Plan shards",
    "generate_shard": "Generate shard",
    "validate_shard": "Validate shard",
    "generate_validate_shard": "Generate + validate shard (one local task)",
    "merge_data": "Merge data + validation report",
    "fit_feature_spec": "Fit feature spec",
    "build_features_shard": "Build features (shard)",
    "merge_features": "Merge features",
    "select_features": "Select features",
    "train": "Train + calibrate",
    "evaluate": "Evaluate on test split",
    "register": "Register challenger",
    "select_train_evaluate_register": "Select, train, evaluate, register (one local task)",
    "deploy_canary": "Canary deploy",
    "finalize_tracking": "Close MLflow run",
}
GROUP_NAMES = {
    "exit_handler": "Training (MLflow run closed on exit)",
    "generate_loop": "Generate + validate each shard",
    "features_loop": "Build features for each shard",
    "deploy_condition": "Deploy requested",
}


def build_training_pipeline(
    parallelism: int = 2,
    resources: Mapping[str, StepResources] | None = None,
    task_groups: int = 0,
    fuse_steps: bool = False,
) -> Callable[..., Any]:
    """Return the pipeline function; ``parallelism`` caps concurrent shard tasks and ``resources`` sets
    each step's pod resources (both compile-time in KFP; ``resources`` defaults to the config's defaults).

    ``fuse_steps`` (the local runner, ``pipeline.fuse_local_steps``) runs generate → validate as one task
    per shard (group), :func:`components.generate_validate_shard`, and select → train → evaluate → register
    as one task, :func:`components.select_train_evaluate_register`; both call the same step functions, so
    one process pays their imports once. A compiled pipeline keeps a task per step."""
    look = StepLook(DISPLAY_NAMES, dict(resources) if resources is not None else PipelineConfig().resources)
    warnings.filterwarnings("ignore", message=LOCAL_NOOP_WARNING, category=UserWarning)

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
        form = run_form(usecase, config_name, config_yaml, overrides, n_patients, seed, run_name)
        finalize = close_run_on_exit(form, look)

        with dsl.ExitHandler(finalize, name=GROUP_NAMES["exit_handler"]):
            half = add_data_half(
                form, look, parallelism, GROUP_NAMES["generate_loop"], task_groups, fuse_steps=fuse_steps
            )
            config, tracking, plan, data = half.config, half.tracking, half.plan, half.data
            spec = look(
                c.fit_feature_spec(config=config, validated=data.outputs["validated"]), "fit_feature_spec"
            )

            with dsl.ParallelFor(
                plan.outputs["Output"], parallelism=parallelism, name=GROUP_NAMES["features_loop"]
            ) as shard:
                feat = look(
                    c.build_features_shard(
                        config=config,
                        feature_spec=spec.outputs["feature_spec"],
                        validated=data.outputs["validated"],
                        raw=data.outputs["raw"],
                        plan=plan.outputs["plan"],
                        shard=shard,
                    ),
                    "build_features_shard",
                )

            features = look(
                c.merge_features(
                    config=config,
                    feature_spec=spec.outputs["feature_spec"],
                    features_shards=dsl.Collected(feat.outputs["features_shard"]),
                ),
                "merge_features",
            )
            if fuse_steps:
                registered = look(
                    c.select_train_evaluate_register(
                        config=config,
                        features=features.outputs["features"],
                        raw=data.outputs["raw"],
                        validation_report=data.outputs["validation_report"],
                        validated=data.outputs["validated"],
                        mlflow_run_id=tracking.output,
                    ),
                    "select_train_evaluate_register",
                    resources_of="train",
                )
            else:
                selection = look(
                    c.select_features(config=config, features=features.outputs["features"]),
                    "select_features",
                )
                trained = look(
                    c.train(
                        config=config,
                        features=features.outputs["features"],
                        selection=selection.outputs["selection"],
                        raw=data.outputs["raw"],
                        mlflow_run_id=tracking.output,
                    ),
                    "train",
                )
                # Always labelled (train.engine is a run-time config value): the label only lets the pod reach
                # a DaskCluster's pods (manifests/dask/networkpolicy.yaml). The fused task runs only on
                # kfp.local, where pod labels mean nothing.
                kubernetes.add_pod_label(trained, *CLIENT_LABEL)
                evaluated = look(
                    c.evaluate(
                        config=config,
                        bundle=trained.outputs["bundle"],
                        features=features.outputs["features"],
                        mlflow_run_id=tracking.output,
                    ),
                    "evaluate",
                )
                registered = look(
                    c.register(
                        config=config,
                        bundle=trained.outputs["bundle"],
                        evaluation=evaluated.outputs["evaluation"],
                        validation_report=data.outputs["validation_report"],
                        validated=data.outputs["validated"],
                        mlflow_run_id=tracking.output,
                    ),
                    "register",
                )
            # Register (alone or in the fused task) has registry side effects: never served from the cache.
            registered.set_caching_options(False)
            # KFP condition expression, not a Python comparison.
            with dsl.If(deploy == True, name=GROUP_NAMES["deploy_condition"]):  # noqa: E712
                look(
                    c.deploy_canary(
                        config=config,
                        model_uri=registered.outputs["Output"],
                        inference_service=inference_service,
                        namespace=namespace,
                        percent=canary_percent,
                    ),
                    "deploy_canary",
                ).set_caching_options(False)
        # Outputs may only come from the top level, where the exit task alone is: it returns the model URI
        # register recorded on the MLflow run.
        return finalize.output

    return clinrisk_training
