"""Segmentation's experiment hooks: how the shared experiments machinery (:mod:`clinrisk.experiments`) runs one
segmentation config and reads its per-image validation scores.

``clinrisk experiments run configs/experiments/segmentation.yaml`` (or its alias ``clinrisk segmentation
experiments``) trains every arm of the suite through :func:`run_config` into one MLflow store and registry
(so each run's promotion compares it with the champion so far), then the shared comparison pairs the runs on
``image_id`` and bootstraps by ``patient_id`` (a patient's slices are correlated, so patients are resampled,
not images): Δ mean Dice and Δ mean IoU vs the baseline with percentile CIs, "better" / "worse" / "no clear
change", and the Markdown + JSON report.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from clinrisk.errors import ConfigError, DataError
from clinrisk.usecases.base import ExperimentHooks

# What a run's summary in the report holds, from its metrics.json.
SUMMARY_KEYS = (
    "val_dice", "val_iou", "train_dice", "best_epoch", "train_seconds", "model_version", "promoted",
    "promotion_reason",
)  # fmt: skip


def run_config(base: Path | None, overrides: list[str], runner: str) -> dict[str, Any]:
    """Train, score and track one config (``overrides`` applied): the suite entry of that run."""
    from clinrisk.config import load_config
    from clinrisk.tracking import tracking_uri
    from clinrisk.usecases.segmentation.run import run_dir, train_run

    if runner not in ("subprocess", "local"):
        raise ConfigError(
            f"--runner {runner}: segmentation experiments train in this process (runner subprocess); "
            "`clinrisk pipeline run --usecase segmentation --runner docker` runs one config in containers"
        )
    cfg = load_config(base, overrides)
    if cfg.run.usecase != "segmentation":
        raise ConfigError(f"{base}: configures use case {cfg.run.usecase!r}, not 'segmentation'")
    metrics = train_run(cfg)
    version = metrics.get("model_version")
    return {
        "predictions": str(run_dir(cfg) / "per_image.parquet"),
        "pipeline_dir": str(run_dir(cfg)),
        "mlflow_run_id": metrics.get("mlflow_run_id"),
        "tracking_uri": tracking_uri(cfg) if cfg.tracking.enabled else None,
        "model_uri": f"models:/{cfg.tracking.registered_model_name}/{version}" if version else None,
        "summary": {k: metrics.get(k) for k in SUMMARY_KEYS},
    }


def per_image_scores(entry: Mapping[str, Any]) -> pl.DataFrame:
    """The run's validation Dice/IoU per image (``per_image.parquet`` of its run directory)."""
    path = Path(str(entry.get("predictions") or ""))
    if not path.is_file():
        raise DataError(f"run {entry.get('name')}: per-image scores {path} not found")
    try:
        return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise DataError(f"{path}: unreadable per-image scores ({type(exc).__name__}: {exc})") from None


EXPERIMENT_HOOKS = ExperimentHooks(
    run=run_config,
    scores=per_image_scores,
    unit="image_id",
    group="patient_id",
    metrics={"dice": "higher", "iou": "higher"},
    unit_label="validation images",
)
