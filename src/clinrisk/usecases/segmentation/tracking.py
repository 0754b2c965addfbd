"""MLflow for segmentation runs: params, per-epoch metrics, artefacts, registry version and promotion.

Uses the platform's store (``clinrisk.tracking.configure``: the run's sqlite store or ``tracking.tracking_uri``)
and its registry. Promotion: the new version becomes ``@champion`` when there is none, or when its validation
Dice beats the champion's by at least ``params.promote.min_improvement`` (absolute). The champion is
re-scored on THIS run's validation images first, so both numbers are measured on the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinrisk.tracking import CHAMPION, configure, flatten_metrics, mlflow_client
from clinrisk.usecases.segmentation.config import SegmentationParams

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig
    from clinrisk.usecases.segmentation.dataset import ImageSet

ARTIFACT_DIR = "segmentation"


def promotion_decision(challenger: float, champion: float | None, margin: float) -> tuple[bool, str]:
    if champion is None:
        return True, "no champion yet"
    if challenger >= champion + margin:
        return True, f"val Dice {challenger:.4f} >= champion {champion:.4f} + margin {margin:.4f}"
    return False, f"val Dice {challenger:.4f} < champion {champion:.4f} + margin {margin:.4f}"


def _champion_dice(client: Any, name: str, va: ImageSet, threshold: float) -> tuple[str | None, float | None]:
    import mlflow

    from clinrisk.usecases.segmentation.loading import CHECKPOINT, load_model
    from clinrisk.usecases.segmentation.training import predict_proba, score

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no registered model or no alias yet
        return None, None
    local = mlflow.artifacts.download_artifacts(f"{version.source}/{CHECKPOINT}")
    forward, model_params, header = load_model(Path(local))
    if int(header["train_size"]) != va.images.shape[1]:
        return str(version.version), None  # another input size: not comparable, the challenger wins
    s = score(predict_proba(forward, model_params, va.images), va.masks, float(header["threshold"]))
    return str(version.version), float(s["dice"])


def track_training(
    cfg: ClinriskConfig,
    p: SegmentationParams,
    out: Path,
    history: list[dict[str, float]],
    metrics: dict[str, Any],
    va: ImageSet,
    promote: bool = True,
) -> dict[str, Any]:
    """One MLflow run for a ``clinrisk segmentation train``: params, epochs, artefacts, registry."""
    exp_id = configure(cfg)
    client = mlflow_client()
    run = client.create_run(
        exp_id,
        run_name=cfg.run.name,
        tags={"clinrisk.usecase": "segmentation", "clinrisk.run_name": cfg.run.name},
    )
    run_id = run.info.run_id
    try:
        log_params(client, run_id, cfg)
        log_epochs(client, run_id, history)
        log_final(client, run_id, metrics)
        client.log_artifacts(run_id, str(out), ARTIFACT_DIR)
        registered = register_and_promote(
            cfg, p, client, run_id, f"{run.info.artifact_uri}/{ARTIFACT_DIR}", metrics, va, promote
        )
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return {"mlflow_run_id": run_id, **registered}


def log_params(client: Any, run_id: str, cfg: ClinriskConfig) -> None:
    from mlflow.entities import Param

    from clinrisk.config import flatten_config

    flat = {k: v for k, v in flatten_config(cfg).items() if k.startswith(("params.", "run."))}
    items = [Param(k, v[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def log_epochs(client: Any, run_id: str, history: list[dict[str, float]]) -> None:
    """Per-epoch loss, LR and train/validation Dice + IoU (step = epoch)."""
    from mlflow.entities import Metric

    ms = [
        Metric(k, float(row[k]), 0, int(row["epoch"]))
        for row in history
        for k in ("loss", "lr", "train_dice", "train_iou", "val_dice", "val_iou")
    ]
    client.log_batch(run_id, metrics=ms)


def log_final(client: Any, run_id: str, metrics: dict[str, Any], prefix: str = "final") -> None:
    from mlflow.entities import Metric

    final = flatten_metrics(
        {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}, prefix
    )
    client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in final.items()])


def register_and_promote(
    cfg: ClinriskConfig,
    p: SegmentationParams,
    client: Any,
    run_id: str,
    source: str,
    metrics: dict[str, Any],
    va: ImageSet,
    promote: bool = True,
) -> dict[str, Any]:
    """Register ``source`` (the run's checkpoint folder) as a new version; make it ``@champion`` when it
    beats the champion, re-scored on ``va``, by ``promote.min_improvement`` (or when there is none)."""
    name = cfg.tracking.registered_model_name
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name)
    champion_version, champion_dice = _champion_dice(client, name, va, p.train.threshold)
    mv = client.create_model_version(
        name,
        source,
        run_id=run_id,
        tags={"val_dice": f"{metrics['val_dice']:.6f}", "data_hash": metrics["data_hash"]},
    )
    promoted, why = promotion_decision(float(metrics["val_dice"]), champion_dice, p.promote.min_improvement)
    if promote and promoted:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
    client.set_tag(
        run_id, "clinrisk.promotion", ("promoted: " if promote and promoted else "kept champion: ") + why
    )
    return {
        "model_version": str(mv.version),
        "promoted": bool(promote and promoted),
        "promotion_reason": why,
        "champion_version_before": champion_version,
        "champion_val_dice_before": champion_dice,
    }
