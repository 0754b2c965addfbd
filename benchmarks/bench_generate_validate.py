"""Benchmark: generate (+ validate, when ``clinrisk.validate.validate_dataset`` exists) at several sizes.

Each measurement runs in a fresh subprocess so its peak RSS (max of RUSAGE_SELF and RUSAGE_CHILDREN
maxrss, i.e. the driver or the largest worker) is not polluted by earlier runs. Prints rows/s, wall
time and peak RSS per run and the median over repeats.

    .venv/bin/python benchmarks/bench_generate_validate.py                       # 2M ×3, 10M ×1
    .venv/bin/python benchmarks/bench_generate_validate.py --rows-targets 200000 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROWS_PER_PATIENT = 10.7  # rows per simulated patient at the default config (washout, no-entry excluded)


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, child_kb) / 1024.0


def run_once(rows_target: int, workers: int, shards: int, validate: bool, config: str | None) -> dict:
    """One generate (+ validate) run in this process; returns timings and peak RSS."""
    from clinrisk.config import load_config
    from clinrisk.generate import generate_dataset

    n_patients = max(100, round(rows_target / ROWS_PER_PATIENT))
    cfg = load_config(
        config,
        [f"generate.n_patients={n_patients}", f"generate.n_shards={shards}", f"run.workers={workers}"],
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_gen_"))
    try:
        t0 = time.perf_counter()
        manifest = generate_dataset(cfg, tmp / "raw", workers=workers, progress=False)
        t_gen = time.perf_counter() - t0
        t_val = None
        if validate:
            validate_dataset: Any = None
            with contextlib.suppress(ImportError):
                from clinrisk.validate import validate_dataset
            if validate_dataset is not None:
                t1 = time.perf_counter()
                validate_dataset(cfg, tmp / "raw", tmp / "validated_run", workers=workers)
                t_val = time.perf_counter() - t1
        rows = manifest["rows"]
        return {
            "rows_target": rows_target,
            "rows": rows,
            "patients": manifest["patients"],
            "generate_s": round(t_gen, 3),
            "generate_rows_per_s": round(rows / t_gen),
            "validate_s": None if t_val is None else round(t_val, 3),
            "total_s": round(t_gen + (t_val or 0.0), 3),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "alpha": manifest["alpha"],
            "prevalence_recorded": manifest["prevalence"]["recorded"],
            "prevalence_true": manifest["prevalence"]["true"],
            "hba1c_missing_share": manifest["hba1c_missing_share"],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows-targets", type=int, nargs="+", default=[2_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3, help="repeats at the first (smallest) target")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--no-validate", action="store_true")
    ap.add_argument("--config", default=None, help="base config (defaults if omitted)")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one is not None:  # child mode: one measurement, JSON on the last line
        res = run_once(args.one, args.workers, args.shards, not args.no_validate, args.config)
        print(json.dumps(res))
        return

    targets = sorted(args.rows_targets)
    for i, target in enumerate(targets):
        repeats = args.repeats if i == 0 else 1
        results = []
        for r in range(repeats):
            cmd = [sys.executable, __file__, "--one", str(target), "--workers", str(args.workers)]
            cmd += ["--shards", str(args.shards)]
            if args.no_validate:
                cmd.append("--no-validate")
            if args.config:
                cmd += ["--config", args.config]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            results.append(res)
            print(f"[{target:,} rows, run {r + 1}/{repeats}] {json.dumps(res)}", flush=True)
        med = {
            k: statistics.median(x[k] for x in results)
            for k in ("generate_s", "total_s", "generate_rows_per_s", "peak_rss_mb")
        }
        vals = [x["validate_s"] for x in results if x["validate_s"] is not None]
        med["validate_s"] = statistics.median(vals) if vals else None
        print(
            f"== {target:,} rows ({results[0]['rows']:,} actual), workers={args.workers}, "
            f"median of {repeats}: generate {med['generate_s']:.2f}s "
            f"({med['generate_rows_per_s']:,.0f} rows/s), validate {med['validate_s']}, "
            f"total {med['total_s']:.2f}s, peak RSS {med['peak_rss_mb']:.0f} MB",
            flush=True,
        )


if __name__ == "__main__":
    main()
