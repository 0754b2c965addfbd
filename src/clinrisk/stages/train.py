"""The train stage: LightGBM on the selected features, calibration and τ on validation, the model bundle.

Core: :func:`clinrisk.train.fit_bundle` (the frozen spec and the feature shards in, the bundle's parts out;
it reads shards out of core, writes nothing). ``run`` reads ``features``, ``selection`` (when it exists)
and ``raw_manifest`` (the raw dataset's manifest: the bundle's ``data_hash`` is its content hash, the same
under the CLI and KFP), writes ``model_bundle``, and logs the validation metrics to KFP and the pipeline's
MLflow run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clinrisk.config import ClinriskConfig
from clinrisk.selection import features_for_training
from clinrisk.stages.catalog import Catalog, flat_numeric
from clinrisk.train import fit_bundle, load_training_inputs, publish_bundle


def selected_features(cfg: ClinriskConfig, selection: Path | None) -> list[str] | None:
    """The feature list the selection allows (``select.apply``), or None (all features) without one."""
    if selection is None or not selection.exists():
        return None
    return features_for_training(selection, cfg.select.apply)


def run(cfg: ClinriskConfig, io: Catalog) -> dict[str, Any]:
    """Train on ``io["features"]`` (restricted by the selection ``io["selection"]``, a folder or its
    selected_features.json, when it exists) into ``io["model_bundle"]``; returns ``{"metadata", "metrics",
    "threshold", "bundle_dir"}``."""
    features = io.path("features")
    names = selected_features(cfg, io.existing("selection"))
    spec, shards, provenance = load_training_inputs(features, io.get("raw_manifest"))
    parts = fit_bundle(cfg, spec, shards, provenance, names, where=str(features))
    bundle_dir = io.path("model_bundle")
    result = publish_bundle(cfg, parts, bundle_dir)
    metrics = result["metrics"] if isinstance(result.get("metrics"), dict) else {}
    io.log_numeric(metrics)
    if io.mlflow_run_id:
        from clinrisk.tracking import log_to_run

        log_to_run(cfg, io.mlflow_run_id, metrics=flat_numeric(metrics), artifacts={"bundle": bundle_dir})
    return result
