"""Drift → retrain demo on the generator's secular drift (coding sensitivity, BMI, testing rise by year).

1. generate + validate one population; build features with the early forward-in-time split
   (train 2005–2009, validation 2010–2011) and train model A;
2. replay later calendar years: features for each year's rows via the bundle's spec and
   ``clinrisk.features.build_feature_frame``, scored with bundle A and logged with ``RequestLogger``
   (timestamp = that year), then the drift job per year — PSI/KS/out-of-range rise with distance;
3. when the job says retrain, build features with a later split (train 2010–2014, validation
   2015–2016) and train model B; compare A vs B on the same latest test rows (2020) with a paired
   patient bootstrap (recorded and true labels), and re-run drift on B's own reference.

Usage: ``.venv/bin/python benchmarks/demo_drift_retrain.py --patients 6000 --out outputs/demo_drift``
(add ``--no-secular-drift`` with another ``--out`` for the control population without secular drift).
Prints one JSON document with the numbers (also written to ``<out>/demo_drift.json``); each replayed
year carries the drift job's reasons, so one can see *why* it asks for retraining.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from clinrisk.config import ClinriskConfig, load_config
from clinrisk.io import list_shards


def _cfg(
    out: Path,
    patients: int,
    train: tuple[int, int],
    val: tuple[int, int],
    test: tuple[int, int],
    secular_drift: bool = True,
) -> ClinriskConfig:
    return load_config(
        Path("configs/tiny.yaml"),
        [
            f"run.output_dir={out}",
            "run.name=demo",
            f"generate.n_patients={patients}",
            f"split.train_years=[{train[0]},{train[1]}]",
            f"split.validation_years=[{val[0]},{val[1]}]",
            f"split.test_years=[{test[0]},{test[1]}]",
            "split.temporal=true",
            "monitoring.min_drifted_features=3",
            f"generate.secular_drift={str(secular_drift).lower()}",
        ],
    )


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=6000)
    ap.add_argument("--out", type=Path, default=Path("outputs/demo_drift"))
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument(
        "--secular-drift", action=argparse.BooleanOptionalAction, default=True, help="generator drift"
    )
    args = ap.parse_args()
    out: Path = args.out.resolve()
    t0 = time.perf_counter()

    from clinrisk import metrics as M
    from clinrisk.bundle import load_bundle
    from clinrisk.drift import drift_report, headline
    from clinrisk.evaluate import load_test_frame
    from clinrisk.features import FeatureSpec, build_feature_frame, build_features_dataset
    from clinrisk.generate import generate_dataset
    from clinrisk.request_log import RequestLogger, read_request_log
    from clinrisk.train import train_model
    from clinrisk.validate import validate_dataset

    sd = bool(args.secular_drift)
    cfg_a = _cfg(out, args.patients, (2005, 2009), (2010, 2011), (2020, 2020), sd)
    cfg_b = _cfg(out, args.patients, (2010, 2014), (2015, 2016), (2020, 2020), sd)
    raw, val_root = out / "raw", out / "val"
    if not (raw / "manifest.json").is_file():
        generate_dataset(cfg_a, raw, progress=False)
    if not (val_root / "validated").is_dir():
        validate_dataset(cfg_a, raw, val_root)
    feats_a, feats_b = out / "features_a", out / "features_b"
    build_features_dataset(cfg_a, val_root / "validated", feats_a, raw / "truth")
    train_model(cfg_a, feats_a, out / "bundle_a")
    bundle_a = load_bundle(out / "bundle_a")
    spec_a = FeatureSpec.from_json(out / "bundle_a" / "feature_spec.json")

    # Replay: every later calendar year's serving population — patient-years before the first recorded
    # T2D code (what a screening service scores; labels not needed) — features rebuilt from validated
    # raw data with A's spec.
    validated = pl.scan_parquet([str(f) for f in list_shards(val_root / "validated")])
    eligible = (
        validated.select("patient_id", "year", "dx_E11")
        .with_columns(t_rec=pl.col("year").filter(pl.col("dx_E11").fill_null(False)).min().over("patient_id"))
        .filter(pl.col("t_rec").is_null() | (pl.col("year") < pl.col("t_rec")))
        .select("patient_id", "year")
        .collect()
    )
    frame = (
        build_feature_frame(validated, spec_a).collect().join(eligible, on=["patient_id", "year"], how="semi")
    )
    log_dir = out / "request_log"
    if log_dir.exists():  # the demo's own log from an earlier run: start the replay clean
        import shutil

        shutil.rmtree(log_dir)
    per_year: list[dict[str, Any]] = []
    retrain_year = None
    for year in range(2012, 2024):
        rows = frame.filter(pl.col("year") == year)
        if rows.height == 0:
            continue
        with RequestLogger(log_dir, flush_rows=50_000) as lg:
            lg.log(rows, bundle_a.predict_proba(rows), bundle_a.version, datetime(year, 12, 31, tzinfo=UTC))
        logged = read_request_log(
            log_dir, since=datetime(year, 1, 1, tzinfo=UTC), until=datetime(year + 1, 1, 1, tzinfo=UTC)
        )
        rep = drift_report(bundle_a.reference, logged, cfg_a)
        h = headline(rep)
        per_year.append(
            {
                "year": year,
                "rows": rep["n_rows"],
                "decision": rep["decision"],
                "max_feature_psi": round(h["drift_max_feature_psi"], 4),
                "n_drifted_features": rep["n_drifted_features"],
                "top_features": [e["feature"] for e in rep["features"][:3]],
                "max_non_trend_feature_psi": round(
                    max((e["psi"] for e in rep["features"] if not e["calendar_trend"]), default=0.0), 4
                ),
                "score_psi": round(h.get("drift_score_psi", float("nan")), 4),
                "score_ks": round(h.get("drift_score_ks", float("nan")), 4),
                "score_mean": round(h.get("drift_score_mean", float("nan")), 4),
                "max_feature_out_of_range": [
                    rep["max_out_of_range_feature"],
                    round(rep["max_feature_out_of_range"], 4),
                ],
                "rows_any_feature_out_of_range": round(h["drift_out_of_range_rate"], 4),
                "drifted_features": rep["drifted_features"],
                "drifted_calendar_trend_features": rep["drifted_calendar_trend_features"],
                "reasons": rep["reasons"],
            }
        )
        if retrain_year is None and rep["decision"] == "retrain":
            retrain_year = year

    # Retrain on later years and compare on the same latest test rows.
    build_features_dataset(cfg_b, val_root / "validated", feats_b, raw / "truth")
    train_model(cfg_b, feats_b, out / "bundle_b")
    bundle_b = load_bundle(out / "bundle_b")
    test = load_test_frame(feats_b)
    pa = bundle_a.predict_proba(
        build_feature_frame(validated, spec_a)
        .collect()
        .join(test.select("patient_id", "year"), on=["patient_id", "year"], how="semi")
        .sort("patient_id", "year")
    )
    test = test.sort("patient_id", "year")
    pb = bundle_b.predict_proba(test)
    comparison: dict[str, Any] = {"n_test_rows": test.height, "test_years": [2020, 2020]}
    for lab, col in (("recorded", "label_rec"), ("true", "eval_label_true")):
        y = test[col].cast(pl.Float64).to_numpy()
        d = M.paired_bootstrap_diff(
            y, pa, pb, test["patient_id"].to_numpy(), tau=0.1, p_t=0.1, n_boot=args.bootstrap, seed=0
        )
        comparison[lab] = {
            "model_a": {
                "ap": M.average_precision(y, pa),
                "brier": M.brier(y, pa),
                "mean_p": float(np.mean(pa)),
            },
            "model_b": {
                "ap": M.average_precision(y, pb),
                "brier": M.brier(y, pb),
                "mean_p": float(np.mean(pb)),
            },
            "b_minus_a": {
                k: {x: round(d[k][x], 5) for x in ("diff", "lo", "hi")} for k in ("ap", "brier", "auc")
            },
            "prevalence": float(y.mean()),
        }
    latest = frame.filter(pl.col("year") == 2023)
    spec_b = FeatureSpec.from_json(out / "bundle_b" / "feature_spec.json")
    latest_b = (
        build_feature_frame(validated, spec_b)
        .collect()
        .join(eligible, on=["patient_id", "year"], how="semi")
        .filter(pl.col("year") == 2023)
    )
    after = drift_report(
        bundle_b.reference,
        latest_b.with_columns(pl.Series("probability", bundle_b.predict_proba(latest_b))),
        cfg_b,
    )
    result = {
        "patients": args.patients,
        "secular_drift": sd,
        "replay": per_year,
        "first_retrain_year": retrain_year,
        "comparison_on_2020_test_rows": comparison,
        "drift_2023_vs_model_a": per_year[-1],
        "drift_2023_vs_model_b": {k: v for k, v in headline(after).items()},
        "model_a": bundle_a.version,
        "model_b": bundle_b.version,
        "rows_2023": latest.height,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (out / "demo_drift.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
