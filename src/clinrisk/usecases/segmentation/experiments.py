"""Iteration experiments: train every ``params.experiments`` entry (the config plus its overrides), then
compare each with the first (the baseline) on the SAME validation images.

CIs: the validation set is resampled by patient (a patient's slices stay together, as they are correlated),
``train.bootstrap_replicates`` times; each replicate's delta is the mean per-image Dice (IoU) difference over
the resampled images. The 95 % interval is the 2.5/97.5 percentiles. A delta whose interval excludes 0 is
reported as "better" or "worse", otherwise "no clear change".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import yaml

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig


def overrides(name: str, spec: dict[str, Any], base_name: str) -> list[str]:
    sets = [f"run.name={base_name}-{name}"]
    for key, value in dict(spec.get("set") or {}).items():
        sets.append(
            f"params.{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        )
    return sets


def patient_bootstrap(
    base: pl.DataFrame, other: pl.DataFrame, metric: str, replicates: int, seed: int
) -> dict[str, Any]:
    """Delta (other - base) of the mean per-image ``metric`` with a patient-resampled 95 % CI."""
    joined = base.select("image_id", "patient_id", pl.col(metric).alias("a")).join(
        other.select("image_id", pl.col(metric).alias("b")), on="image_id", how="inner"
    )
    if joined.height != base.height:
        raise ValueError("experiments were validated on different images; cannot pair them")
    diff = (joined["b"] - joined["a"]).to_numpy()
    groups = joined["patient_id"].to_numpy()
    patients = np.unique(groups)
    sums = np.array([diff[groups == g].sum() for g in patients])
    counts = np.array([(groups == g).sum() for g in patients])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, patients.size, size=(replicates, patients.size))
    deltas = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {
        "delta": float(diff.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "verdict": "better" if lo > 0 else ("worse" if hi < 0 else "no clear change"),
    }


def run_experiments(config_path: Path | None, sets: list[str], out_dir: Path | None = None) -> dict[str, Any]:
    from clinrisk.config import load_config
    from clinrisk.errors import ConfigError
    from clinrisk.usecases.segmentation.run import params, run_dir, train_run

    base_cfg = load_config(config_path, sets)
    p = params(base_cfg)
    if not p.experiments:
        raise ConfigError("params.experiments: no experiment configured")
    # One MLflow store + registry for every experiment (each run name would otherwise get its own sqlite
    # store under its run directory), so promotion compares each experiment with the champion so far.
    shared: list[str] = []
    if not base_cfg.tracking.tracking_uri:
        from clinrisk.tracking import tracking_uri

        shared = [f"tracking.tracking_uri={tracking_uri(base_cfg)}"]
    rows: list[dict[str, Any]] = []
    frames: dict[str, pl.DataFrame] = {}
    for name, spec in p.experiments.items():
        cfg: ClinriskConfig = load_config(
            config_path, [*sets, *shared, *overrides(name, spec, base_cfg.run.name)]
        )
        metrics = train_run(cfg)
        frames[name] = pl.read_parquet(run_dir(cfg) / "per_image.parquet")
        rows.append(
            {
                "experiment": name,
                "change": str(spec.get("change", "")),
                "run_name": cfg.run.name,
                **{
                    k: metrics.get(k)
                    for k in (
                        "val_dice",
                        "val_iou",
                        "train_dice",
                        "best_epoch",
                        "train_seconds",
                        "model_version",
                        "promoted",
                        "promotion_reason",
                        "mlflow_run_id",
                    )
                },
            }
        )
    baseline = str(rows[0]["experiment"])
    for row in rows:
        for metric in ("dice", "iou"):
            row[f"{metric}_vs_baseline"] = (
                None
                if row["experiment"] == baseline
                else patient_bootstrap(
                    frames[baseline],
                    frames[str(row["experiment"])],
                    metric,
                    p.train.bootstrap_replicates,
                    base_cfg.run.seed,
                )
            )
    report = {
        "baseline": baseline,
        "experiments": rows,
        "bootstrap": {
            "unit": "patient",
            "replicates": p.train.bootstrap_replicates,
            "interval": "95% percentile",
        },
        "validation_images": frames[baseline].height,
        "validation_patients": frames[baseline]["patient_id"].n_unique(),
        "promotion_margin": p.promote.min_improvement,
    }
    out = out_dir or Path(base_cfg.run.output_dir) / base_cfg.run.name / "segmentation-experiments"
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "comparison.md").write_text(render_markdown(report))
    report["report_dir"] = str(out)
    return report


def _fmt_delta(d: dict[str, Any] | None) -> str:
    if d is None:
        return "—"
    return f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] {d['verdict']}"


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Segmentation experiments",
        "",
        f"Validation: {report['validation_images']} images of {report['validation_patients']} patients; "
        f"deltas vs `{report['baseline']}` with 95 % CIs from {report['bootstrap']['replicates']} "
        "patient-level bootstrap replicates. Promotion margin: "
        f"+{report['promotion_margin']:.3f} val Dice over the champion.",
        "",
        "| experiment | key change | val Dice | val IoU | Δ Dice [95 % CI] | Δ IoU [95 % CI] | best epoch | train s | registry |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["experiments"]:
        reg = (
            f"v{r['model_version']} {'→ champion' if r['promoted'] else 'kept champion'}"
            if r.get("model_version")
            else "—"
        )
        lines.append(
            f"| {r['experiment']} | {r['change']} | {r['val_dice']:.3f} | {r['val_iou']:.3f} | "
            f"{_fmt_delta(r['dice_vs_baseline'])} | {_fmt_delta(r['iou_vs_baseline'])} | {r['best_epoch']} | "
            f"{r['train_seconds']:.0f} | {reg} |"
        )
    return "\n".join(lines) + "\n"
