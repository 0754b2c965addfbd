"""Path-level entry points of the segmentation pipeline's own steps (what its KFP components call).

The data half of the DAG is the platform's (resolve config → plan → generate/ingest + validate per shard →
merge, with quarantine and the validation report); these steps take the merged validated dataset from
there. Each reads the run's config artifact, writes one output folder atomically (a failed step publishes
nothing) and logs into the pipeline's one MLflow run:

- :func:`train_step`: patient-grouped split, UNet training, best checkpoint by validation Dice (the model
  artifact), per-epoch metrics and learning curves;
- :func:`evaluate_step`: the checkpoint re-loaded and scored on the validation patients (per-image Dice/IoU,
  overlays, a Markdown report);
- :func:`register_step`: the checkpoint folder logged and registered; ``@champion`` moves when validation
  Dice beats the re-scored champion by ``params.promote.min_improvement``; the run is closed;
- :func:`deploy_canary_step`: the registered checkpoint's storage URI rolled out as a canary on the
  segmentation InferenceService (the shared :mod:`clinrisk.rollout` state machine).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinrisk.errors import DataError
from clinrisk.task_exit import task_step

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig

MetricLogger = Callable[[str, float], None]
TRAIN_METRICS = "train_metrics.json"
EVAL_METRICS = "metrics.json"
REPORT = "report.md"
XLA_CACHE = "xla-cache"


def _config(config_dir: str | Path) -> ClinriskConfig:
    from clinrisk.config import load_config
    from clinrisk.steps import CONFIG_FILE

    return load_config(Path(config_dir) / CONFIG_FILE)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: missing (the previous step's output is incomplete)")
    return dict(json.loads(path.read_text()))


def _write(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def _kfp_metrics(log: MetricLogger | None, metrics: dict[str, Any]) -> None:
    if log is None:
        return
    for k, v in sorted(metrics.items()):
        if isinstance(v, int | float) and not isinstance(v, bool) and v == v:
            log(k, float(v))


def _compile_cache(cfg: ClinriskConfig) -> None:
    """One XLA cache per run root (``<output_dir>/<run.name>/xla-cache``), shared by the model steps."""
    from clinrisk.paths import RunPaths
    from clinrisk.usecases.segmentation.training import use_compile_cache

    use_compile_cache(RunPaths.for_config(cfg).root / XLA_CACHE)


def _client(cfg: ClinriskConfig) -> Any:
    from clinrisk.tracking import configure, mlflow_client

    configure(cfg)
    return mlflow_client()


@task_step
def train_step(
    config_dir: str | Path,
    validated_dir: str | Path,
    mlflow_run_id: str,
    model_dir: str | Path,
    log_metric: MetricLogger | None = None,
) -> dict[str, Any]:
    """Train on the validated images; the model folder holds the checkpoint and its training record."""
    from clinrisk.io import atomic_output_dir
    from clinrisk.usecases.segmentation.dataset import load_validated_image_set
    from clinrisk.usecases.segmentation.run import fit_checkpoint, params
    from clinrisk.usecases.segmentation.tracking import ARTIFACT_DIR, log_epochs, log_final, log_params

    cfg = _config(config_dir)
    _compile_cache(cfg)
    p = params(cfg)
    data = load_validated_image_set(Path(validated_dir), p)
    with atomic_output_dir(Path(model_dir)) as tmp:
        fitted = fit_checkpoint(cfg, p, data, tmp)
        _write(tmp / TRAIN_METRICS, fitted)
        history = json.loads((tmp / "history.json").read_text())
        if mlflow_run_id:
            client = _client(cfg)
            log_params(client, mlflow_run_id, cfg)
            log_epochs(client, mlflow_run_id, history)
            log_final(client, mlflow_run_id, fitted, "train")
            client.log_artifact(mlflow_run_id, str(tmp / "learning_curves.png"), ARTIFACT_DIR)
    _kfp_metrics(log_metric, fitted)
    return fitted


@task_step
def evaluate_step(
    config_dir: str | Path,
    validated_dir: str | Path,
    model_dir: str | Path,
    mlflow_run_id: str,
    evaluation_dir: str | Path,
    report_file: str | Path,
    log_metric: MetricLogger | None = None,
) -> dict[str, Any]:
    """Score the checkpoint on the validation patients: metrics.json, per_image.parquet, overlays, report."""
    from clinrisk.io import atomic_output_dir
    from clinrisk.usecases.segmentation.dataset import load_validated_image_set
    from clinrisk.usecases.segmentation.loading import CHECKPOINT
    from clinrisk.usecases.segmentation.run import params, score_checkpoint
    from clinrisk.usecases.segmentation.tracking import ARTIFACT_DIR, log_final

    cfg = _config(config_dir)
    _compile_cache(cfg)
    p = params(cfg)
    fitted = _read(Path(model_dir) / TRAIN_METRICS)
    data = load_validated_image_set(Path(validated_dir), p)
    if data.data_hash != fitted["data_hash"]:
        raise DataError(f"{validated_dir}: not the data the model was trained on (data hash differs)")
    with atomic_output_dir(Path(evaluation_dir)) as tmp:
        metrics, _ = score_checkpoint(cfg, p, data, Path(model_dir) / CHECKPOINT, tmp)
        metrics = {**metrics, "best_epoch": fitted["best_epoch"], "data_hash": data.data_hash}
        _write(tmp / EVAL_METRICS, metrics)
        report = render_report(cfg.run.name, metrics, fitted)
        (tmp / REPORT).write_text(report)
        if mlflow_run_id:
            client = _client(cfg)
            log_final(client, mlflow_run_id, metrics, "final")
            client.log_artifacts(mlflow_run_id, str(tmp), f"{ARTIFACT_DIR}/evaluation")
    Path(report_file).parent.mkdir(parents=True, exist_ok=True)
    Path(report_file).write_text(report)
    _kfp_metrics(log_metric, metrics)
    return metrics


def render_report(run_name: str, metrics: dict[str, Any], fitted: dict[str, Any]) -> str:
    return (
        f"# Segmentation evaluation: `{run_name}`\n\n"
        f"Validation patients only (patient-grouped split; no patient is on both sides).\n\n"
        "| metric | value |\n|---|---|\n"
        f"| val Dice | {metrics['val_dice']:.4f} |\n"
        f"| val IoU | {metrics['val_iou']:.4f} |\n"
        f"| mean confidence | {metrics['mean_confidence']:.4f} |\n"
        f"| validation images | {metrics['val_images']} |\n"
        f"| train Dice (best epoch) | {fitted['train_dice']:.4f} |\n"
        f"| best epoch | {fitted['best_epoch']} of {fitted['epochs']} |\n"
        f"| images / quarantined | {fitted['images']} / {fitted['quarantined']} |\n"
    )


@task_step
def register_step(
    config_dir: str | Path,
    model_dir: str | Path,
    evaluation_dir: str | Path,
    validated_dir: str | Path,
    mlflow_run_id: str,
) -> str:
    """Log the checkpoint folder and the validation report, register a new version, promote it past the
    margin, close the MLflow run; returns ``models:/<name>/<version>`` (the model folder without tracking)."""
    from clinrisk.steps import CONFIG_FILE, tag_model_uri_step
    from clinrisk.tracking import model_uri
    from clinrisk.usecases.segmentation.dataset import load_validated_image_set, split_rows
    from clinrisk.usecases.segmentation.run import params
    from clinrisk.usecases.segmentation.tracking import ARTIFACT_DIR, register_and_promote

    cfg = _config(config_dir)
    if not mlflow_run_id:
        return str(Path(model_dir))
    _compile_cache(cfg)  # the champion is re-scored with the same forward pass
    p = params(cfg)
    evaluation = _read(Path(evaluation_dir) / EVAL_METRICS)
    data = load_validated_image_set(Path(validated_dir), p)
    if data.data_hash != evaluation["data_hash"]:
        raise DataError(f"{validated_dir}: not the data the model was evaluated on (data hash differs)")
    _, va_rows = split_rows(data, p.train.val_fraction, cfg.run.seed)
    client = _client(cfg)
    try:
        client.log_artifacts(mlflow_run_id, str(model_dir), ARTIFACT_DIR)
        report_dir = Path(validated_dir) / "validation"
        if report_dir.is_dir():
            client.log_artifacts(mlflow_run_id, str(report_dir), "validation")
        client.log_artifact(mlflow_run_id, str(Path(config_dir) / CONFIG_FILE), "config")
        source = f"{client.get_run(mlflow_run_id).info.artifact_uri}/{ARTIFACT_DIR}"
        registered = register_and_promote(
            cfg, p, client, mlflow_run_id, source, evaluation, data.subset(va_rows)
        )
        client.set_terminated(mlflow_run_id, "FINISHED")
    except BaseException:
        client.set_terminated(mlflow_run_id, "FAILED")
        raise
    return tag_model_uri_step(config_dir, mlflow_run_id, model_uri(cfg, registered["model_version"]))


def checkpoint_storage_uri(cfg: ClinriskConfig, uri: str) -> str:
    """Where a registered segmentation version's checkpoint folder lives, as a URI KServe's storage
    initializer downloads (``models:/`` cannot be read by it); any other URI is returned as given."""
    from clinrisk.tracking import kserve_storage_uri, parse_model_uri

    if not uri.startswith("models:/"):
        return uri
    name, ref = parse_model_uri(uri)
    client = _client(cfg)
    try:
        version = (
            client.get_model_version(name, ref)
            if ref.isdigit()
            else client.get_model_version_by_alias(name, ref)
        )
    except Exception as exc:
        raise DataError(
            f"{uri}: cannot resolve registered model ({str(exc).splitlines()[0][:200]})"
        ) from None
    return kserve_storage_uri(str(version.source), cfg.tracking.artifacts_destination)


@task_step
def deploy_canary_step(
    config_dir: str | Path,
    model_uri: str,
    inference_service: str,
    namespace: str,
    percent: int,
    api: Any = None,
) -> str:
    """Start (or shift) a canary of the registered checkpoint on the segmentation InferenceService."""
    from clinrisk.rollout import KubernetesIsvcApi, Rollout

    cfg = _config(config_dir)
    rollout = Rollout(
        api if api is not None else KubernetesIsvcApi(),
        namespace=namespace or cfg.serving.namespace,
        name=inference_service or cfg.serving.model_name,
    )
    return str(rollout.canary(model_uri=checkpoint_storage_uri(cfg, model_uri), percent=percent))
