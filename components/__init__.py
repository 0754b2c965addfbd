"""Kubeflow Pipelines components for clinrisk.

One module per step. Each component is a thin ``@dsl.component`` wrapper that imports ``clinrisk`` inside
its body and calls one function of ``clinrisk.steps``; it holds no logic of its own. All run in the
pipeline image (``clinrisk.images.pipeline_image()``), so the same component runs under ``kfp.local``
(subprocess or Docker) and on a Kubeflow cluster.
"""

from components.data import (
    generate_shard,
    generate_validate_shard,
    merge_data,
    plan_generation,
    validate_shard,
)
from components.deploy import deploy_canary
from components.evaluate import evaluate
from components.features import build_features_shard, fit_feature_spec, merge_features
from components.model_chain import select_train_evaluate_register
from components.register import register
from components.resolve_config import resolve_config
from components.select import select_features
from components.tracking import finalize_tracking, start_tracking
from components.train import train

__all__ = [
    "build_features_shard",
    "deploy_canary",
    "evaluate",
    "finalize_tracking",
    "fit_feature_spec",
    "generate_shard",
    "generate_validate_shard",
    "merge_data",
    "merge_features",
    "plan_generation",
    "register",
    "resolve_config",
    "select_features",
    "select_train_evaluate_register",
    "start_tracking",
    "train",
    "validate_shard",
]
