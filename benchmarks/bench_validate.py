"""Raw-validation benchmark: rows/s and peak RSS of ``clinrisk.validate.validate_dataset``.

    .venv/bin/python benchmarks/bench_validate.py --rows 2000000 --shards 4 --workers 2
    .venv/bin/python benchmarks/bench_validate.py --rows 200000 --source generator   # real generator

Data: ``--source synthetic`` (default) writes contract-shaped rows from ``tests/data/validate_fixtures.py``
with 0.1 % of rows corrupted (bad unit string, impossible value, duplicate) so the quarantine path is
exercised; ``--source generator`` runs ``clinrisk.generate.generate_dataset`` (about 10 rows per patient).
Data preparation runs in the parent; validation runs in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _make_synthetic(raw: Path, rows: int, shards: int) -> None:
    import polars as pl
    from tests.data.validate_fixtures import clean_frame, write_raw

    years = 10
    per_shard = max(1, rows // shards // years)
    frames = []
    for k in range(shards):
        df = clean_frame(per_shard, years, first_pid=k * 10**8, seed=k)
        i = pl.int_range(pl.len())
        df = df.with_columns(
            glucose_unit=pl.when(i % 2003 == 7).then(None).otherwise(pl.col("glucose_unit")),
            sbp_mmhg=pl.when(i % 1999 == 11).then(pl.lit(-1.0, pl.Float32)).otherwise(pl.col("sbp_mmhg")),
        )
        df = df.with_columns(pl.col("glucose_unit").cast(pl.String))
        df = df.with_columns(
            glucose_unit=pl.when(i % 3001 == 5).then(pl.lit("mg/l")).otherwise(pl.col("glucose_unit"))
        )
        frames.append(pl.concat([df, df.slice(0, max(1, df.height // 1000))]))
    write_raw(raw, frames)


def _make_generated(raw: Path, rows: int, shards: int) -> None:
    from clinrisk.config import load_config
    from clinrisk.generate import generate_dataset  # type: ignore[import-not-found,unused-ignore]

    cfg = load_config(None, [f"generate.n_patients={max(10, rows // 10)}", f"generate.n_shards={shards}"])
    generate_dataset(cfg, raw, workers=2)


def _child(raw: str, out: str, workers: int) -> None:
    from clinrisk.config import load_config
    from clinrisk.validate import validate_dataset

    cfg = load_config(None, ["validate.max_quarantine_fraction=1.0"])
    t0 = time.perf_counter()
    rep = validate_dataset(cfg, Path(raw), Path(out), workers=workers)
    dt = time.perf_counter() - t0
    rss = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    print(
        json.dumps(
            {
                "rows": rep["rows_in"],
                "shards": rep["n_shards"],
                "workers": workers,
                "quarantined": rep["rows_quarantined"],
                "seconds": round(dt, 3),
                "rows_per_s": round(rep["rows_in"] / dt),
                "peak_rss_mib": round(rss / 1024, 1),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--source", choices=["synthetic", "generator"], default="synthetic")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw", Path(tmp) / "run"
        t0 = time.perf_counter()
        (_make_generated if args.source == "generator" else _make_synthetic)(raw, args.rows, args.shards)
        print(f"data ({args.source}) prepared in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        subprocess.run(
            [sys.executable, __file__, "--child", str(raw), str(out), str(args.workers)], check=True, cwd=ROOT
        )


if __name__ == "__main__":
    main()
