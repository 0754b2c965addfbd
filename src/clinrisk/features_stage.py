"""The clinical features stage: shard by shard, validated against the feature schema, atomic output.

The pure core is :func:`clinrisk.features.features_lazy` (raw patient-years in, feature table out); this
module reads validated shards, runs it, checks the result with ``clinrisk.feature_schema`` and writes the
features directory (shards, ``feature_spec.json``, ``feature_schema.json``, ``summary.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from clinrisk.errors import DataError
from clinrisk.feature_schema import feature_schema_dict, validate_features
from clinrisk.feature_table import FeatureSpec
from clinrisk.features import cast_raw, features_lazy, fit_feature_spec
from clinrisk.io import (
    SHARD_DIR_RE,
    atomic_output_dir,
    check_no_duplicate_keys,
    check_parquet_files,
    list_shards,
    shard_dir_name,
    write_json,
)
from clinrisk.schemas import OBSERVED_SCHEMA
from clinrisk.units import unit_counts, unit_quarantine


def _shard_index(path: Path) -> int:
    m = SHARD_DIR_RE.match(Path(path).parent.name)
    if not m:
        raise DataError(f"{path}: not inside a shard=NNN directory")
    return int(m.group(1))


def build_features_shard(
    validated_file: Path,
    truth_file: Path | None,
    spec: FeatureSpec,
    cfg: Any,
    out_file: Path,
    unit_q_file: Path,
) -> dict[str, Any]:
    """Features + labels (+ eval) for one validated shard, validated against the feature schema before
    it is written; also writes the shard's unit-quarantine table. Returns the shard summary."""
    validated_file, out_file, unit_q_file = Path(validated_file), Path(out_file), Path(unit_q_file)
    if not validated_file.is_file():
        raise DataError(f"{validated_file}: validated shard not found")
    check_no_duplicate_keys(validated_file, ["patient_id", "year"])  # validate quarantines duplicates
    raw = pl.scan_parquet(validated_file)
    truth = None
    if truth_file is not None:
        if not Path(truth_file).is_file():
            raise DataError(f"{truth_file}: truth shard not found")
        truth = pl.scan_parquet(truth_file)
    df = features_lazy(raw, spec, cfg, truth).collect(engine="streaming")
    validate_features(df, spec, where=str(out_file))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(out_file, compression="zstd")

    sorted_raw = cast_raw(raw).sort("patient_id", "year")
    uq = unit_quarantine(sorted_raw).collect(engine="streaming")
    unit_q_file.parent.mkdir(parents=True, exist_ok=True)
    uq.write_parquet(unit_q_file, compression="zstd")

    per_split = (
        df.group_by("split")
        .agg(
            pl.len().alias("rows"),
            pl.col("label_rec").cast(pl.Int64).sum().alias("label_rec_pos"),
            pl.col("label").cast(pl.Float64).sum().alias("label_sum"),
            (pl.col("sample_weight") > 0).sum().alias("weighted_rows"),
            *(
                [pl.col("eval_label_true").cast(pl.Int64).sum().alias("label_true_pos")]
                if truth is not None
                else []
            ),
        )
        .sort("split")
    )
    return {
        "shard": _maybe_shard_index(validated_file),
        "rows": df.height,
        "patients": df["patient_id"].n_unique(),
        "per_split": {r["split"]: {k: v for k, v in r.items() if k != "split"} for r in per_split.to_dicts()},
        "units": unit_counts(sorted_raw),
        "unit_quarantine_rows": uq.height,
    }


def _maybe_shard_index(path: Path) -> int | None:
    m = SHARD_DIR_RE.match(Path(path).parent.name)
    return int(m.group(1)) if m else None


def _shard_job(args: tuple[str, str | None, str, dict[str, Any], str, str]) -> dict[str, Any]:
    """Process-pool entry point (plain, picklable arguments)."""
    from clinrisk.config import ClinriskConfig

    vf, tf, spec_json, cfg_dict, of, qf = args
    cfg = ClinriskConfig.model_validate(cfg_dict)
    spec = FeatureSpec.from_json(spec_json)
    return build_features_shard(Path(vf), Path(tf) if tf else None, spec, cfg, Path(of), Path(qf))


def merge_shard_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up per-shard feature summaries (rows, patients, per-split counts, unit-cleaning counts)."""
    per_split: dict[str, dict[str, float]] = {}
    units: dict[str, dict[str, float]] = {}
    for p in parts:
        for s, vals in p["per_split"].items():
            acc = per_split.setdefault(s, {})
            for k, v in vals.items():
                acc[k] = acc.get(k, 0) + v
        for a, vals in p.get("units", {}).items():
            ua = units.setdefault(a, {})
            for k, v in vals.items():
                ua[k] = ua.get(k, 0) + v
    for vals in per_split.values():
        n = max(vals["rows"], 1)
        vals["prevalence_recorded"] = vals["label_rec_pos"] / n
        vals["mean_label"] = vals["label_sum"] / n
        if "label_true_pos" in vals:
            vals["prevalence_true"] = vals["label_true_pos"] / n
    for vals in units.values():
        present = max(vals.get("present", 0), 1)
        flagged = sum(
            vals.get(r, 0)
            for r in (
                "implausible_for_unit",
                "incompatible_unit",
                "ambiguous_missing_unit",
                "implausible_any_unit",
            )
        )
        vals["quarantined"] = flagged
        vals["quarantined_share"] = flagged / present
    return {
        "rows": sum(p["rows"] for p in parts),
        "patients": sum(p["patients"] for p in parts),
        "shards": len(parts),
        "per_split": per_split,
        "units": units,
        "unit_quarantine_rows": sum(p.get("unit_quarantine_rows", 0) for p in parts),
    }


def build_features_dataset(
    cfg: Any,
    validated_dir: Path,
    out_dir: Path,
    truth_dir: Path | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """The features stage: fit the spec on training-split rows, then build every shard (memory bounded
    by one shard) into ``out_dir`` atomically. Returns the summary (also written as summary.json)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    shards = check_parquet_files(list_shards(Path(validated_dir)), dict(OBSERVED_SCHEMA))
    truth_files: list[Path | None] = [None] * len(shards)
    if truth_dir is not None:
        truth_files = [Path(truth_dir) / f.parent.name / f.name for f in shards]
        missing = [str(t) for t in truth_files if t is not None and not t.is_file()]
        if missing:
            raise DataError(f"{truth_dir}: truth shards missing: {missing[:3]}")
        check_parquet_files([t for t in truth_files if t is not None])
    spec = fit_feature_spec(pl.scan_parquet([str(f) for f in shards]), cfg)
    spec_json = spec.to_json()
    n_workers = max(1, min(workers or cfg.run.workers, len(shards)))
    with atomic_output_dir(Path(out_dir)) as tmp:
        jobs = [
            (
                str(f),
                str(t) if t is not None else None,
                spec_json,
                cfg.to_dict(),
                str(tmp / f.parent.name / "part.parquet"),
                str(tmp / "unit_quarantine" / f.parent.name / "part.parquet"),
            )
            for f, t in zip(shards, truth_files, strict=True)
        ]
        if n_workers == 1:
            parts = [_shard_job(j) for j in jobs]
        else:
            with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as ex:
                parts = list(ex.map(_shard_job, jobs))
        summary = write_feature_metadata(
            tmp, spec, cfg, parts, [shard_dir_name(_shard_index(f)) for f in shards], truth_dir is not None
        )
    return summary


def write_feature_metadata(
    out_dir: Path,
    spec: FeatureSpec,
    cfg: Any,
    parts: list[dict[str, Any]],
    shard_dirs: list[str],
    with_truth: bool,
) -> dict[str, Any]:
    """Write feature_spec.json, feature_schema.json and summary.json next to the feature shards."""
    out_dir = Path(out_dir)
    (out_dir / "feature_spec.json").write_text(spec.to_json())
    write_json(out_dir / "feature_schema.json", feature_schema_dict(spec, with_eval=with_truth))
    summary = feature_summary(spec, cfg, parts, shard_dirs, with_truth)
    write_json(out_dir / "summary.json", summary)
    return summary


def feature_summary(
    spec: FeatureSpec, cfg: Any, parts: list[dict[str, Any]], shard_dirs: list[str], with_truth: bool
) -> dict[str, Any]:
    """summary.json of a feature table: the merged per-shard counts plus what the spec and config fix."""
    return {
        **merge_shard_summaries(parts),
        "n_features": len(spec.feature_names),
        "window_years": spec.window_years,
        "horizon_years": spec.horizon_years,
        "label_strategy": cfg.labels.strategy,
        "with_truth": with_truth,
        "shard_dirs": shard_dirs,
    }
