"""The clinrisk training pipeline: one DAG for kfp.local (subprocess or Docker) and Kubeflow Pipelines.

generate/validate and features fan out per shard with ``dsl.ParallelFor`` (one pod per shard on a cluster)
and are collected with ``dsl.Collected``; then select → train → evaluate → register (→ canary deploy when
``deploy`` is true). This module only wires inputs to outputs.
"""

from collections.abc import Callable
from typing import Any

import components as c
from kfp import dsl

PIPELINE_NAME = "clinrisk-training"


def build_training_pipeline(parallelism: int = 2) -> Callable[..., Any]:
    """Return the pipeline function; ``parallelism`` caps concurrent shard tasks (a compile-time int in KFP)."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="A use case's data → validated data → features → LightGBM → MLflow registry (→ canary)",
    )
    def clinrisk_training(
        config_yaml: str,
        overrides: list[str] = [],  # noqa: B006 - KFP pipeline parameters take literal defaults
        deploy: bool = False,
        inference_service: str = "",  # "" = the config's serving.model_name (the use case's)
        namespace: str = "",  # "" = the config's serving.namespace
        canary_percent: int = 10,
    ) -> str:
        cfg = c.resolve_config(config_yaml=config_yaml, overrides=overrides)
        tracking = c.start_tracking(config=cfg.outputs["config"], kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        # Steps with side effects outside their outputs (MLflow run, registry, InferenceService) are never
        # served from the cache; the deterministic data/feature/model steps are.
        tracking.set_caching_options(False)
        # The plan owns the fan-out: both ParallelFors iterate over the shard indices it returns.
        plan = c.plan_generation(config=cfg.outputs["config"])

        with dsl.ParallelFor(plan.outputs["Output"], parallelism=parallelism) as shard:
            gen = c.generate_shard(config=cfg.outputs["config"], plan=plan.outputs["plan"], shard=shard)
            val = c.validate_shard(
                config=cfg.outputs["config"], raw_shard=gen.outputs["raw_shard"], shard=shard
            )

        data = c.merge_data(
            config=cfg.outputs["config"],
            plan=plan.outputs["plan"],
            raw_shards=dsl.Collected(gen.outputs["raw_shard"]),
            validated_shards=dsl.Collected(val.outputs["validated_shard"]),
        )
        spec = c.fit_feature_spec(config=cfg.outputs["config"], validated=data.outputs["validated"])

        with dsl.ParallelFor(plan.outputs["Output"], parallelism=parallelism) as shard:
            feat = c.build_features_shard(
                config=cfg.outputs["config"],
                feature_spec=spec.outputs["feature_spec"],
                validated=data.outputs["validated"],
                raw=data.outputs["raw"],
                shard=shard,
            )

        features = c.merge_features(
            config=cfg.outputs["config"],
            feature_spec=spec.outputs["feature_spec"],
            features_shards=dsl.Collected(feat.outputs["features_shard"]),
        )
        selection = c.select_features(config=cfg.outputs["config"], features=features.outputs["features"])
        trained = c.train(
            config=cfg.outputs["config"],
            features=features.outputs["features"],
            selection=selection.outputs["selection"],
            mlflow_run_id=tracking.output,
        )
        evaluated = c.evaluate(
            config=cfg.outputs["config"],
            bundle=trained.outputs["bundle"],
            features=features.outputs["features"],
            mlflow_run_id=tracking.output,
        )
        registered = c.register(
            config=cfg.outputs["config"],
            bundle=trained.outputs["bundle"],
            evaluation=evaluated.outputs["evaluation"],
            validation_report=data.outputs["validation_report"],
            validated=data.outputs["validated"],
            mlflow_run_id=tracking.output,
        )
        registered.set_caching_options(False)
        with dsl.If(deploy == True):  # noqa: E712 - KFP condition expression, not a Python comparison
            c.deploy_canary(
                config=cfg.outputs["config"],
                model_uri=registered.output,
                inference_service=inference_service,
                namespace=namespace,
                percent=canary_percent,
            ).set_caching_options(False)
        return registered.output

    return clinrisk_training
