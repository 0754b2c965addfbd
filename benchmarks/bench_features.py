"""Features-stage benchmark: wall time and peak RSS at two sizes, polars vs naive pandas rolling, and the
per-lab measurement coverage for X = 1, 2, 3, 5 (the window-X justification, docs/science.md §3.2).

    .venv/bin/python benchmarks/bench_features.py                       # 0.5M and 2M rows
    .venv/bin/python benchmarks/bench_features.py --rows 20000 100000 --pandas-rows 20000   # quick
    .venv/bin/python benchmarks/bench_features.py --source generator --coverage-only --coverage-rows 300000

Data: the product generator (``clinrisk.generate.generate_dataset`` + validation-free copy of observed/)
when importable and ``--source generator``, else the contract-shaped synthetic rows of
``tests/features/synth.py``. Each size runs in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ROWS_PER_SHARD = 250_000


def _make_synthetic(out: Path, rows: int, seed: int = 0) -> Path:
    """Write ~``rows`` synthetic validated rows as shards of ~ROWS_PER_SHARD rows."""
    from tests.features.synth import synthetic_raw

    from clinrisk.io import shard_file

    rows_per_patient = 14.5
    n_shards = max(1, round(rows / ROWS_PER_SHARD))
    per_shard = max(10, int(rows / rows_per_patient / n_shards))
    for s in range(n_shards):
        df = synthetic_raw(per_shard, seed=seed + s, id_offset=s * 10_000_000)
        f = shard_file(out / "validated", s)
        f.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(f)
    return out / "validated"


def _make_generated(out: Path, rows: int) -> Path:
    from clinrisk.config import load_config
    from clinrisk.generate import generate_dataset

    n_patients = max(100, int(rows / 10))
    n_shards = max(1, round(rows / ROWS_PER_SHARD))
    cfg = load_config(None, [f"generate.n_patients={n_patients}", f"generate.n_shards={n_shards}"])
    generate_dataset(cfg, out / "raw", workers=1)
    return out / "raw" / "observed"


def child(rows: int, source: str, workers: int) -> None:
    """Run in a subprocess: build data, then time the features stage alone."""
    import polars as pl

    from clinrisk.config import load_config
    from clinrisk.features_stage import build_features_dataset
    from clinrisk.io import list_shards

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        validated = _make_generated(tmp, rows) if source == "generator" else _make_synthetic(tmp, rows)
        n_raw = pl.scan_parquet([str(f) for f in list_shards(validated)]).select(pl.len()).collect().item()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cfg = load_config(None, [])
        t0 = time.perf_counter()
        summary = build_features_dataset(cfg, validated, tmp / "features", None, workers=workers)
        wall = time.perf_counter() - t0
        rss = max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
    print(
        json.dumps(
            {
                "raw_rows": n_raw,
                "feature_rows": summary["rows"],
                "n_features": summary["n_features"],
                "wall_s": round(wall, 2),
                "peak_rss_mb": round(rss / 1024, 1),
                "rss_after_datagen_mb": round(rss_before / 1024, 1),
                "unit_quarantine_rows": summary["unit_quarantine_rows"],
            }
        )
    )


def pandas_vs_polars(rows: int) -> dict[str, float]:
    """Gap-aware 3-year mean/min/max/count per lab: polars rolling_*_by.over vs naive pandas."""
    import numpy as np
    import polars as pl
    from tests.features.synth import synthetic_raw

    from clinrisk.features import cast_raw
    from clinrisk.units import normalise_units

    labs = ["hba1c", "glucose", "ldl", "hdl", "tc", "tg", "creatinine", "weight"]
    raw = synthetic_raw(max(10, int(rows / 14.5)), seed=11)
    base = (
        normalise_units(cast_raw(raw.lazy()).sort("patient_id", "year"))
        .select("patient_id", pl.col("year").cast(pl.Int32), *labs)
        .collect()
    )

    t0 = time.perf_counter()
    exprs = []
    for lab in labs:
        v = pl.col(lab)
        exprs += [
            v.rolling_mean_by("year", "3i").over("patient_id").alias(f"{lab}_mean"),
            v.rolling_min_by("year", "3i").over("patient_id").alias(f"{lab}_min"),
            v.rolling_max_by("year", "3i").over("patient_id").alias(f"{lab}_max"),
            v.is_not_null().cast(pl.Int32).rolling_sum_by("year", "3i").over("patient_id").alias(f"{lab}_n"),
        ]
    pl_out = base.lazy().with_columns(exprs).collect()
    t_polars = time.perf_counter() - t0

    import pandas as pd

    pdf = base.to_pandas()
    t0 = time.perf_counter()
    # Idiomatic gap-aware pandas: a time-based window on a per-row date (Jan 1 of the year); 1000 days
    # holds years t-2..t, never t-3, whatever the gap pattern.
    pdf["date"] = pd.to_datetime(pdf["year"].astype(str) + "-01-01")
    roll = pdf.groupby("patient_id", sort=True).rolling("1000D", on="date")[labs]
    agg = roll.agg(["mean", "min", "max", "count"])
    agg.columns = [f"{lab}_{fn if fn != 'count' else 'n'}" for lab, fn in agg.columns]
    pd_out = agg.reset_index(drop=True)
    t_pandas = time.perf_counter() - t0
    a = pl_out["hba1c_mean"].to_numpy()
    b = pd_out["hba1c_mean"].to_numpy()
    same = bool(np.allclose(np.nan_to_num(a, nan=-1), np.nan_to_num(b, nan=-1), rtol=1e-9))
    return {
        "rows": base.height,
        "polars_s": round(t_polars, 3),
        "pandas_s": round(t_pandas, 3),
        "speedup": round(t_pandas / t_polars, 1),
        "results_equal": same,
    }


COVERAGE_WINDOWS = (1, 2, 3, 5)
COVERAGE_LABS = ("hba1c", "glucose", "ldl", "hdl", "tc", "tg", "creatinine", "sbp", "weight")


def coverage(rows: int, source: str) -> dict[str, dict[str, float]]:
    """Per lab: share of prediction patient-years (year >= 2005) with >= 1 measurement of the lab in the
    previous X calendar years (t - X, t], after unit cleaning (a quarantined value counts as missing), for
    X = 1, 2, 3, 5; plus ``glycaemic`` (HbA1c or glucose) and the share of rows with a value ever (LOCF)."""
    import polars as pl

    from clinrisk.features import cast_raw
    from clinrisk.io import list_shards
    from clinrisk.units import normalise_units

    with tempfile.TemporaryDirectory() as d:
        validated = (
            _make_generated(Path(d), rows) if source == "generator" else _make_synthetic(Path(d), rows)
        )
        raw = pl.scan_parquet([str(f) for f in list_shards(validated)])
        lf = normalise_units(cast_raw(raw).sort("patient_id", "year")).with_columns(
            pl.col("year").cast(pl.Int32).alias("_yr"),
            pl.col("sbp_mmhg").alias("sbp"),
            glycaemic=pl.when(pl.col("hba1c").is_not_null() | pl.col("glucose").is_not_null()).then(1.0),
        )
        labs = [*COVERAGE_LABS, "glycaemic"]
        exprs = []
        for lab in labs:
            has = pl.col(lab).is_not_null().cast(pl.Int32)
            exprs += [
                (has.rolling_sum_by("_yr", f"{x}i").over("patient_id") > 0).alias(f"{lab}|X={x}")
                for x in COVERAGE_WINDOWS
            ]
            exprs.append((has.cum_sum().over("patient_id") > 0).alias(f"{lab}|ever"))
        out = (
            lf.with_columns(exprs)
            .filter(pl.col("year") >= 2005)
            .select(pl.len().alias("rows"), *[pl.col(e.meta.output_name()).mean() for e in exprs])
            .collect()
        )
    row = out.row(0, named=True)
    table: dict[str, dict[str, float]] = {"_rows": {"n": float(row.pop("rows"))}}
    for key, val in row.items():
        lab, x = key.split("|")
        table.setdefault(lab, {})[x] = round(float(val), 3)
    return table


def print_coverage(table: dict[str, dict[str, float]]) -> None:
    """One line per lab: coverage for each X and ever."""
    cols = [f"X={x}" for x in COVERAGE_WINDOWS] + ["ever"]
    print(f"measurement coverage over {int(table['_rows']['n']):,} patient-years (year >= 2005)")
    print(f"  {'lab':<11}" + "".join(f"{c:>8}" for c in cols))
    for lab, vals in table.items():
        if lab != "_rows":
            print(f"  {lab:<11}" + "".join(f"{vals[c]:>8.3f}" for c in cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[500_000, 2_000_000])
    ap.add_argument("--pandas-rows", type=int, default=200_000)
    ap.add_argument("--coverage-rows", type=int, default=500_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="POLARS_MAX_THREADS for the stage")
    ap.add_argument("--source", choices=["synthetic", "generator"], default="synthetic")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--coverage-only", action="store_true", help="only the measurement-coverage table")
    args = ap.parse_args()
    if args.coverage_only:
        print_coverage(coverage(args.coverage_rows, args.source))
        return
    if args.child is not None:
        child(args.child, args.source, args.workers)
        return

    env = {**os.environ, "POLARS_MAX_THREADS": str(args.threads)}
    print(
        f"source={args.source} threads={args.threads} workers={args.workers} (2-core box shared: timings inflated)"
    )
    for rows in args.rows:
        res = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(rows),
                "--source",
                args.source,
                "--workers",
                str(args.workers),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        print("stage", res.stdout.strip().splitlines()[-1])
    print("rolling polars vs pandas", json.dumps(pandas_vs_polars(args.pandas_rows)))
    print_coverage(coverage(args.coverage_rows, args.source))


if __name__ == "__main__":
    main()
