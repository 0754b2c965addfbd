"""One feature shard, phase by phase, old path vs new path in the same process (issue 20).

The per-shard feature task of the pipeline does: build + collect the feature frame, check it against the
feature schema, compute the unit side outputs (unit quarantine + unit counts), write. This prints the
median wall time of each phase, and for the two phases issue 20 changed, the previous way side by side:

- schema check: pandera alone (before) vs ``feature_schema.validate_features`` (one polars pass, pandera
  only when a rule may be broken);
- unit side outputs: ``unit_quarantine`` + ``unit_counts`` (two resolutions, before) vs ``unit_audit`` (one).

Both sides run on the same frame in one process, so the ratio holds on a loaded machine even when the
absolute seconds do not. Input: a finished pipeline run (``bench_pipeline.py`` or ``clinrisk run``).

    .venv/bin/python benchmarks/bench_feature_shard.py --pipeline-dir outputs/default/latest
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_s(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def latest_pipeline_dir() -> Path | None:
    runs = sorted(ROOT.glob("outputs/*/runs/*/clinrisk-training-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline-dir", type=Path, default=None, help="default: the newest run under outputs/")
    ap.add_argument("--shard", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    run = args.pipeline_dir or latest_pipeline_dir()
    if run is None or not (run / "merge-data" / "validated").is_dir():
        ap.error("--pipeline-dir: no finished pipeline run found (run `make run` or bench_pipeline.py first)")

    import polars as pl

    from clinrisk.config import load_config
    from clinrisk.feature_schema import build_feature_schema, validate_features
    from clinrisk.feature_table import FeatureSpec
    from clinrisk.features import cast_raw
    from clinrisk.io import shard_file
    from clinrisk.units import unit_audit, unit_counts, unit_quarantine
    from clinrisk.usecase_io import scan_validated
    from clinrisk.usecases import get
    from clinrisk.usecases.base import TRUTH_TABLE

    cfg = load_config(run / "resolve-config" / "config" / "config.yaml")
    usecase = get(cfg.run.usecase)
    spec = FeatureSpec.from_json(run / "fit-feature-spec" / "feature_spec" / "feature_spec.json")
    tables = scan_validated(usecase, run / "merge-data" / "validated", args.shard)
    truth = pl.scan_parquet(shard_file(run / "merge-data" / "raw" / TRUTH_TABLE, args.shard))
    (observed,) = tables.values()
    sorted_raw = cast_raw(observed).sort("patient_id", "year")

    build_s, table = _median_s(
        lambda: usecase.features.build(cfg, tables, spec, truth).collect(engine="streaming"), args.repeat
    )
    schema = build_feature_schema(spec, with_eval=True)
    pandera_s, _ = _median_s(lambda: schema.validate(table, lazy=True), args.repeat)
    check_s, _ = _median_s(lambda: validate_features(table, spec), args.repeat)
    two_s, (uq, counts) = _median_s(
        lambda: (unit_quarantine(sorted_raw).collect(engine="streaming"), unit_counts(sorted_raw)),
        args.repeat,
    )
    one_s, (uq1, counts1) = _median_s(lambda: unit_audit(sorted_raw), args.repeat)
    if not (uq.equals(uq1) and counts == counts1):
        raise SystemExit("unit_audit differs from unit_quarantine + unit_counts")

    rows = table.height
    print(f"shard {args.shard}: {rows:,} feature rows x {table.width} columns; medians of {args.repeat}")
    print(f"{'phase':28s} {'before s':>9s} {'after s':>9s} {'ratio':>6s}")
    print(f"{'build + collect':28s} {build_s:9.2f} {build_s:9.2f} {1.0:6.2f}")
    print(f"{'schema check':28s} {pandera_s:9.2f} {check_s:9.2f} {check_s / pandera_s:6.2f}")
    print(f"{'unit side outputs':28s} {two_s:9.2f} {one_s:9.2f} {one_s / two_s:6.2f}")
    before, after = build_s + pandera_s + two_s, build_s + check_s + one_s
    print(f"{'shard total (no write)':28s} {before:9.2f} {after:9.2f} {after / before:6.2f}")
    print(f"feature rows/s per task: before {rows / before:,.0f}, after {rows / after:,.0f}")


if __name__ == "__main__":
    main()
