"""Path-level entry points of every pipeline step: what the KFP components (and the CLI) call.

Each function takes directories (KFP artifact paths), loads the run's config artifact, and calls the stage
function of the library. Per-shard steps let ``dsl.ParallelFor`` fan out one pod per shard; the merge steps
collect shards back into one dataset directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from clinrisk.config import ClinriskConfig, load_config, save_config
from clinrisk.errors import ConfigError, DataError
from clinrisk.io import SHARD_DIR_RE, atomic_output_dir, read_json, write_json

CONFIG_FILE = "config.yaml"
MetricLogger = Callable[[str, float], None]


def _load(config_dir: str | Path) -> ClinriskConfig:
    return load_config(Path(config_dir) / CONFIG_FILE)


def _log_numeric(log: MetricLogger | None, metrics: dict[str, Any], prefix: str = "") -> None:
    """Send the numeric leaves of a (nested) metrics dict to a KFP Metrics logger."""
    if log is None:
        return
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _log_numeric(log, value, f"{name}.")
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float) and value == value:  # skip NaN
            log(name, float(value))


def resolve_config_step(config_yaml: str, overrides: list[str], out_dir: str | Path) -> list[int]:
    """Validate config text + overrides, write the effective config artifact, return the shard indices."""
    try:
        data = yaml.safe_load(config_yaml) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline parameter config_yaml: not valid YAML ({exc})") from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = out / "submitted.yaml"
    src.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_config(src, overrides)
    src.unlink()
    save_config(cfg, out / CONFIG_FILE)
    return list(range(cfg.generate.n_shards))


def copy_shards(part_dirs: list[str | Path], subdir: str, dest: Path) -> int:
    """Copy every ``shard=NNN`` directory found under ``<part>/<subdir>`` into ``dest``; returns the count.

    Two parts holding the same shard is an error (a shard must be produced exactly once).
    """
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for part in part_dirs:
        src_root = Path(part) / subdir if subdir else Path(part)
        if not src_root.is_dir():
            raise DataError(f"{src_root}: expected shard directory not found")
        for child in sorted(src_root.iterdir()):
            if not SHARD_DIR_RE.match(child.name):
                continue
            target = dest / child.name
            if target.exists():
                raise DataError(f"{child.name}: produced by more than one task ({part})")
            shutil.copytree(child, target)
            n += 1
    return n


# --------------------------------------------------------------------------- validation


def validate_shard_step(config_dir: str | Path, raw_shard_dir: str | Path, shard: int, out_dir: str | Path) -> None:
    """Validate one generated shard into ``out_dir/{validated,quarantine}/shard=NNN`` + ``stats.json``."""
    from clinrisk.io import shard_file
    from clinrisk.validate import validate_shard_to_dir

    cfg = _load(config_dir)
    observed = shard_file(Path(raw_shard_dir) / "observed", shard)
    with atomic_output_dir(Path(out_dir)) as tmp:
        stats = validate_shard_to_dir(cfg, observed, shard, tmp / "validated", tmp / "quarantine")
        write_json(tmp / "stats.json", stats)


# --------------------------------------------------------------------------- features


def _spec(spec_dir: str | Path) -> Any:
    from clinrisk.features import FeatureSpec

    return FeatureSpec.from_json(Path(spec_dir) / "feature_spec.json")


def fit_feature_spec_step(config_dir: str | Path, validated_dir: str | Path, out_dir: str | Path) -> None:
    """Freeze the feature spec (categories from training-split patients only)."""
    import polars as pl

    from clinrisk.features import fit_feature_spec
    from clinrisk.io import list_shards

    cfg = _load(config_dir)
    shards = list_shards(Path(validated_dir))
    spec = fit_feature_spec(pl.scan_parquet([str(f) for f in shards]), cfg)
    with atomic_output_dir(Path(out_dir)) as tmp:
        (tmp / "feature_spec.json").write_text(spec.to_json())


def build_features_shard_step(
    config_dir: str | Path,
    spec_dir: str | Path,
    validated_dir: str | Path,
    raw_dir: str | Path,
    shard: int,
    out_dir: str | Path,
) -> None:
    """Features + labels (+ eval columns from truth) for one shard."""
    from clinrisk.features import build_features_shard
    from clinrisk.io import shard_dir_name, shard_file

    cfg = _load(config_dir)
    truth = shard_file(Path(raw_dir) / "truth", shard)
    with atomic_output_dir(Path(out_dir)) as tmp:
        summary = build_features_shard(
            shard_file(Path(validated_dir), shard),
            truth if truth.is_file() else None,
            _spec(spec_dir),
            cfg,
            shard_file(tmp, shard),
            tmp / "unit_quarantine" / shard_dir_name(shard) / "part.parquet",
        )
        write_json(tmp / "summary.json", {**summary, "with_truth": truth.is_file()})


def merge_features_step(
    config_dir: str | Path, spec_dir: str | Path, part_dirs: list[str | Path], out_dir: str | Path
) -> dict[str, Any]:
    """Collect feature shards (and their unit quarantine) with spec, schema and summary."""
    from clinrisk.features import write_feature_metadata

    cfg = _load(config_dir)
    spec = _spec(spec_dir)
    parts = [read_json(Path(p) / "summary.json") for p in part_dirs]
    with atomic_output_dir(Path(out_dir)) as tmp:
        copy_shards(part_dirs, "", tmp)
        copy_shards(part_dirs, "unit_quarantine", tmp / "unit_quarantine")
        shard_dirs = sorted(p.name for p in tmp.iterdir() if SHARD_DIR_RE.match(p.name))
        with_truth = all(p["with_truth"] for p in parts)
        summary = write_feature_metadata(tmp, spec, cfg, parts, shard_dirs, with_truth)
    return summary


# --------------------------------------------------------------------------- evaluation


def evaluate_step(
    config_dir: str | Path,
    bundle_dir: str | Path,
    features_dir: str | Path,
    mlflow_run_id: str,
    out_dir: str | Path,
    report_file: str | Path,
    log_metric: MetricLogger | None = None,
    classification: Any = None,
) -> dict[str, Any]:
    """Evaluate on the test split; report as Markdown, headline metrics, ROC + confusion matrix for the UI."""
    from clinrisk.evaluate import classification_metrics_data, evaluate_model

    cfg = _load(config_dir)
    result = evaluate_model(cfg, Path(bundle_dir), Path(features_dir), Path(out_dir))
    report = Path(out_dir) / "report.md"
    text = report.read_text()
    # The Markdown artifact is a single file; plots stay in the evaluation artifact next to it.
    Path(report_file).parent.mkdir(parents=True, exist_ok=True)
    Path(report_file).write_text(text.replace("](plots/", f"]({Path(out_dir) / 'plots'}/"))
    _log_numeric(log_metric, result["headline"])
    if classification is not None:
        data = classification_metrics_data(result)
        roc = data["roc"]
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
        cm = data["confusion_matrix"]
        classification.log_confusion_matrix(cm["categories"], cm["matrix"])
    if mlflow_run_id:
        from clinrisk.tracking import log_to_run

        log_to_run(cfg, mlflow_run_id, metrics=result["headline"], artifacts={"evaluation": Path(out_dir)})
    return dict(result)


__all__ = [
    "CONFIG_FILE",
    "atomic_output_dir",
    "copy_shards",
    "read_json",
    "resolve_config_step",
    "write_json",
]
