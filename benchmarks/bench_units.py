"""Unit-cleaning accuracy against the generator's truth (docs/science.md §1.8, §6.4).

    .venv/bin/python benchmarks/bench_units.py                  # 20,000 patients
    .venv/bin/python benchmarks/bench_units.py --patients 5000 --set generate.unit_null_rate=0.05

The generator renders each lab/vital in a site's unit system and then injects faults (missing unit,
flipped unit label, HbA1c % values tagged mmol/mol) drawn from uniforms that are consumed whatever the
fault rates are. So a second run with the same seed and every fault rate set to 0 renders the very same
numbers with their TRUE unit labels: converting those gives the canonical truth of every value. Both
runs' observed rows go through ``clinrisk.units.normalise_units`` (what ``build_feature_frame`` uses)
and the unit-quarantine reasons of ``clinrisk.units``. Per analyte and fault kind the table gives:

- ``recovered``: cleaned value equals the truth (relative error ≤ 1e-6);
- ``quarantined``: cleaned value is null and the value is in the unit quarantine (with its reason);
- ``wrong``: cleaned value is non-null but differs from the truth (a silent error: the one that matters).

The truth is the rendered value converted from its TRUE unit (the generator writes rendered values, not
the simulator's unrounded canonical ones): the best any cleaner can do. ``truth_unconvertible`` counts
values the cleaner refuses even with the true label (outside the plausible range of their unit).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FAULT_FREE = [
    "generate.unit_null_rate=0.0",
    "generate.unit_wrong_label_rate=0.0",
    "generate.hba1c_mislabel_rate=0.0",
]
REL_TOL = 1e-6


def _observed(cfg_sets: list[str], out: Path) -> pl.DataFrame:
    from clinrisk.config import load_config
    from clinrisk.generate import generate_dataset
    from clinrisk.io import list_shards

    cfg = load_config(None, cfg_sets)
    generate_dataset(cfg, out, workers=1, progress=False)
    files = list_shards(out / "observed")
    return pl.concat([pl.read_parquet(f) for f in files]).sort("patient_id", "year")


def _cleaned(obs: pl.DataFrame) -> pl.DataFrame:
    """Canonical values and quarantine reasons, exactly as the feature function computes them."""
    from clinrisk.features import cast_raw
    from clinrisk.units import ANALYTES, REGISTRY, _resolution

    raw = cast_raw(obs.lazy()).sort("patient_id", "year")
    cols = []
    for a in ANALYTES:
        value, reason, _ = _resolution(REGISTRY[a])
        cols += [value.alias(f"{a}__clean"), reason.alias(f"{a}__reason")]
    return raw.with_columns(cols).collect()


def accuracy_table(faulty: pl.DataFrame, clean: pl.DataFrame) -> pl.DataFrame:
    """Per analyte and fault kind: n, recovered / quarantined / wrong shares (see module doc)."""
    from clinrisk.units import ANALYTES, REGISTRY

    if faulty.height != clean.height or not faulty["patient_id"].equals(clean["patient_id"]):
        raise SystemExit("the fault-free run produced different rows: the comparison is invalid")
    rows = []
    for a in ANALYTES:
        an = REGISTRY[a]
        if not faulty[an.value_col].equals(clean[an.value_col], check_names=False):
            raise SystemExit(f"{an.value_col}: values differ between the runs; comparison invalid")
        f_unit = faulty[an.unit_col].cast(pl.String)
        t_unit = clean[an.unit_col].cast(pl.String)
        df = pl.DataFrame(
            {
                "present": faulty[an.value_col].is_not_null(),
                "f_unit": f_unit,
                "t_unit": t_unit,
                "truth": clean[f"{a}__clean"],
                "got": faulty[f"{a}__clean"],
                "reason": faulty[f"{a}__reason"],
            }
        ).filter(pl.col("present"))
        df = df.with_columns(
            kind=pl.when(pl.col("f_unit").is_null())
            .then(pl.lit("unit missing"))
            .when(pl.col("f_unit") != pl.col("t_unit"))
            .then(pl.lit("wrong label"))
            .otherwise(pl.lit("correct label")),
            ok=(pl.col("got") - pl.col("truth")).abs() <= REL_TOL * pl.col("truth").abs() + 1e-9,
        )
        for kind in ("all", "correct label", "unit missing", "wrong label"):
            part = df if kind == "all" else df.filter(pl.col("kind") == kind)
            n = part.height
            if n == 0:
                continue
            rec = int(part.filter(pl.col("got").is_not_null() & pl.col("ok")).height)
            quar = int(part.filter(pl.col("got").is_null() & pl.col("reason").is_not_null()).height)
            wrong = int(part.filter(pl.col("got").is_not_null() & ~pl.col("ok").fill_null(False)).height)
            other = n - rec - quar - wrong  # null without a reason: must be 0
            truth_null = int(part.filter(pl.col("truth").is_null()).height)
            rows.append(
                {
                    "analyte": a,
                    "kind": kind,
                    "n": n,
                    "recovered": rec / n,
                    "quarantined": quar / n,
                    "wrong": wrong / n,
                    "unaccounted": other / n,
                    "truth_unconvertible": truth_null,
                }
            )
    return pl.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--set", "-s", action="append", default=[], help="config override key=value")
    args = ap.parse_args()
    base = [f"generate.n_patients={args.patients}", f"generate.n_shards={args.shards}", *args.set]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_units_") as tmp:
        faulty = _cleaned(_observed(base, Path(tmp) / "faulty"))
        clean = _cleaned(_observed([*base, *FAULT_FREE], Path(tmp) / "clean"))
    t_gen = time.perf_counter() - t0
    table = accuracy_table(faulty, clean)
    with pl.Config(tbl_rows=200, tbl_cols=20, float_precision=5, tbl_width_chars=160):
        print(table)
    allrows = table.filter(pl.col("kind") == "all")
    tot = int(allrows["n"].sum())
    share = {k: float((allrows[k] * allrows["n"]).sum() / tot) for k in ("recovered", "quarantined", "wrong")}
    print(
        f"all analytes: {tot:,} values; recovered {share['recovered']:.5f}, "
        f"quarantined {share['quarantined']:.5f}, wrong {share['wrong']:.6f} "
        f"({faulty.height:,} rows, {args.patients:,} patients, {t_gen:.1f} s incl. 2 generations)"
    )


if __name__ == "__main__":
    main()
