"""Drift → retrain demo on the generator's secular drift (coding sensitivity, BMI, testing rise by year).

1. generate + validate one population; build features with the early forward-in-time split
   (train 2005–2009, validation 2010–2011) and train model A;
2. replay later calendar years: each year's serving rows (patient-years before the first recorded T2D
   code) get features from A's spec (``clinrisk.features.build_feature_frame``), are scored by A and
   logged with ``RequestLogger`` (timestamp = that year); the drift job then runs per year in four
   variants: the default (unweighted), age-standardised (``monitoring.standardise_by: [age]``: logged
   rows reweighted to the training reference's age deciles), ``*_locf`` counted as calendar-trend
   features, and both ("adjusted", the one that decides). The generator's cohort is closed (everyone is
   30–72 in 2000, nobody younger joins), so it ages a year per year and follow-up grows: eGFR (a function
   of age) and the never-measured share of ``*_locf`` (missing iff never measured since entry, like
   ``*_years_since``) shift in *any* population, with or without secular drift. Standardising by age
   and not counting cumulative features is what a user with an ageing followed population would do;
3. retrain (model B) on the latest rows whose labels are known before the evaluation years start, and
   compare A vs B on *every* eligible row of the evaluation years (default 2018–2020) with the paired
   patient-cluster bootstrap, on recorded and on true labels; then re-run drift against B's reference.

Leakage: with horizon H, a row of year t has its label window (t, t+H]. B's validation ends at
``eval_start − 1 − H`` so its last label year is ``eval_start − 1``; the evaluation rows' outcome windows
start at ``eval_start + 1``: no label year is shared (the same embargo rule as ``split.test_years``).

Usage: ``.venv/bin/python benchmarks/demo_drift_retrain.py --patients 150000 --out /tmp/drift_demo/drift``
(add ``--no-secular-drift`` with another ``--out`` for the control population without secular drift;
~10 min per population on 2 cores at 150k patients, peak RSS 3.5 GB). Prints a summary and writes the full
JSON to ``<out>/demo_drift.json``; results and their reading: ``docs/experiments/drift_retrain.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from clinrisk.config import ClinriskConfig, MonitoringConfig, load_config
from clinrisk.io import list_shards

TRAIN_A, VAL_A = (2005, 2009), (2010, 2011)
REPLAY_YEARS = range(2012, 2024)


def plan_windows(
    eval_years: tuple[int, int], horizon: int, train_len: int = 5, val_len: int = 2
) -> dict[str, Any]:
    """Train/validation years of A (fixed, early) and B (latest whose labels are known by the end of
    ``eval_years[0] − 1``), with the gap between the last training label year and the first evaluation
    outcome year. Raises ValueError when B would not be later than A or a label window would overlap."""
    e0, e1 = eval_years
    if e1 < e0:
        raise ValueError(f"eval_years: {eval_years} is not an increasing range")
    val_end = e0 - 1 - horizon
    val_b = (val_end - val_len + 1, val_end)
    train_b = (val_b[0] - train_len, val_b[0] - 1)
    if train_b[1] <= TRAIN_A[1] or val_b[0] <= VAL_A[1]:
        raise ValueError(
            f"eval_years {eval_years}: model B's windows {train_b}/{val_b} are not later than A's"
        )
    last_label = {"a": VAL_A[1] + horizon, "b": val_b[1] + horizon}
    first_outcome = e0 + 1
    if max(last_label.values()) >= first_outcome:
        raise ValueError("label windows of training/validation and evaluation overlap")
    return {
        "a": {"train_years": TRAIN_A, "validation_years": VAL_A},
        "b": {"train_years": train_b, "validation_years": val_b},
        "eval_years": (e0, e1),
        "last_training_label_year": last_label,
        "first_eval_outcome_year": first_outcome,
        "gap_years": first_outcome - last_label["b"] - 1,
    }


def evaluation_rows(features_dir: Path, eval_years: tuple[int, int]) -> pl.DataFrame:
    """Every labelled row of ``eval_years`` in a features dataset, whatever its split (patient bucket),
    sorted by patient_id, year."""
    return (
        pl.scan_parquet([str(f) for f in list_shards(Path(features_dir))])
        .filter(pl.col("year").is_between(eval_years[0], eval_years[1]) & pl.col("label_rec").is_not_null())
        .collect()
        .sort("patient_id", "year")
    )


def _cfg(
    out: Path,
    patients: int,
    train: tuple[int, int],
    val: tuple[int, int],
    test: tuple[int, int],
    secular_drift: bool = True,
    base: Path = Path("configs/tiny.yaml"),
) -> ClinriskConfig:
    return load_config(
        base,
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


def _drift_entry(rep: dict[str, Any]) -> dict[str, Any]:
    s = rep.get("score") or {}
    st = rep.get("standardisation") or {}
    return {
        "decision": rep["decision"],
        "n_drifted_features": rep["n_drifted_features"],
        "drifted_features": rep["drifted_features"],
        "score_psi": round(float(s.get("psi", float("nan"))), 4),
        "score_mean": round(float(s.get("mean", float("nan"))), 4),
        "max_feature_out_of_range": [
            rep["max_out_of_range_feature"],
            round(rep["max_feature_out_of_range"], 4),
        ],
        "effective_rows": round(float(st.get("effective_rows", rep["n_rows"])), 1),
        "unmatched_reference_share": round(float(st.get("unmatched_reference_share", 0.0)), 4),
        "reasons": rep["reasons"],
    }


def _compare(
    y: np.ndarray, pa: np.ndarray, pb: np.ndarray, groups: np.ndarray, n_boot: int
) -> dict[str, Any]:
    from clinrisk import metrics as M

    d = M.paired_bootstrap_diff(y, pa, pb, groups, tau=0.1, p_t=0.1, n_boot=n_boot, seed=0)
    one = {
        name: {
            "ap": round(M.average_precision(y, p), 5),
            "brier": round(M.brier(y, p), 5),
            "mean_p": round(float(np.mean(p)), 5),
        }
        for name, p in (("model_a", pa), ("model_b", pb))
    }
    return {
        "rows": int(y.size),
        "patients": int(np.unique(groups).size),
        "prevalence": round(float(y.mean()), 5),
        **one,
        "b_minus_a": {
            k: {x: round(d[k][x], 5) for x in ("diff", "lo", "hi", "p_value")} for k in ("ap", "brier", "auc")
        },
    }


def run_demo(
    out: Path,
    patients: int,
    *,
    secular_drift: bool = True,
    standardise_by: list[str] | None = None,
    extra_trend: list[str] | None = None,
    eval_years: tuple[int, int] = (2018, 2020),
    n_boot: int = 200,
    base_config: Path = Path("configs/tiny.yaml"),
) -> dict[str, Any]:
    """The whole demo; returns the JSON-able result (also written to ``out/demo_drift.json``)."""
    from clinrisk.bundle import load_bundle
    from clinrisk.drift import drift_report
    from clinrisk.features import FeatureSpec, build_feature_frame
    from clinrisk.features_stage import build_features_dataset
    from clinrisk.generate import generate_dataset
    from clinrisk.request_log import RequestLogger, read_request_log
    from clinrisk.train import train_model
    from clinrisk.validate import validate_dataset

    std_by = ["age"] if standardise_by is None else list(standardise_by)
    more_trend = ["*_locf"] if extra_trend is None else list(extra_trend)
    out = out.resolve()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t, 1)
        return now

    probe = _cfg(out, patients, TRAIN_A, VAL_A, (eval_years[0], eval_years[1]), secular_drift, base_config)
    plan = plan_windows(eval_years, probe.labels.horizon_years)
    cfg_a = probe
    cfg_b = _cfg(
        out,
        patients,
        plan["b"]["train_years"],
        plan["b"]["validation_years"],
        eval_years,
        secular_drift,
        base_config,
    )
    mon = cfg_a.monitoring
    trend = [*mon.calendar_trend_features, *more_trend]
    variants: dict[str, MonitoringConfig] = {
        "unweighted": mon.model_copy(update={"standardise_by": []}),
        "age_standardised": mon.model_copy(update={"standardise_by": std_by}),
        "locf_as_trend": mon.model_copy(update={"standardise_by": [], "calendar_trend_features": trend}),
        "adjusted": mon.model_copy(update={"standardise_by": std_by, "calendar_trend_features": trend}),
    }
    raw, val_root = out / "raw", out / "val"
    t = time.perf_counter()
    if not (raw / "manifest.json").is_file():
        generate_dataset(cfg_a, raw, progress=False)
    if not (val_root / "validated").is_dir():
        validate_dataset(cfg_a, raw, val_root)
    t = lap("generate_validate", t)
    feats_a, feats_b = out / "features_a", out / "features_b"
    build_features_dataset(cfg_a, val_root / "validated", feats_a, raw / "truth")
    train_model(cfg_a, feats_a, out / "bundle_a")
    bundle_a = load_bundle(out / "bundle_a")
    spec_a = FeatureSpec.from_json(out / "bundle_a" / "feature_spec.json")
    t = lap("features_train_a", t)

    # Replay: every later calendar year's serving population (patient-years before the first recorded
    # T2D code; labels not needed), features rebuilt from validated raw data with A's spec.
    validated = pl.scan_parquet([str(f) for f in list_shards(val_root / "validated")])
    serving = (
        validated.select("patient_id", "year", "dx_E11")
        .with_columns(t_rec=pl.col("year").filter(pl.col("dx_E11").fill_null(False)).min().over("patient_id"))
        .filter(pl.col("t_rec").is_null() | (pl.col("year") < pl.col("t_rec")))
        .select("patient_id", "year")
        .collect()
    )
    frame = (
        build_feature_frame(validated, spec_a).collect().join(serving, on=["patient_id", "year"], how="semi")
    )
    log_dir = out / "request_log"
    if log_dir.exists():  # the demo's own log from an earlier run: start the replay clean
        shutil.rmtree(log_dir)
    replay: list[dict[str, Any]] = []
    first: dict[str, int | None] = dict.fromkeys(variants)
    for year in REPLAY_YEARS:
        rows = frame.filter(pl.col("year") == year)
        if rows.height == 0:
            continue
        with RequestLogger(log_dir, flush_rows=100_000) as lg:
            lg.log(rows, bundle_a.predict_proba(rows), bundle_a.version, datetime(year, 12, 31, tzinfo=UTC))
        logged = read_request_log(
            log_dir, since=datetime(year, 1, 1, tzinfo=UTC), until=datetime(year + 1, 1, 1, tzinfo=UTC)
        )
        age = logged["age"].cast(pl.Float64)
        entry: dict[str, Any] = {
            "year": year,
            "rows": logged.height,
            "mean_age": round(float(np.nanmean(age.to_numpy())), 2),
        }
        for key, mc in variants.items():
            entry[key] = _drift_entry(drift_report(bundle_a.reference, logged, mc))
            if first[key] is None and entry[key]["decision"] == "retrain":
                first[key] = year
        replay.append(entry)
    t = lap("replay_drift", t)

    # Retrain on the latest rows whose labels are known before the evaluation years, then compare A
    # and B on every eligible (labelled) row of the evaluation years, whatever its patient bucket.
    build_features_dataset(cfg_b, val_root / "validated", feats_b, raw / "truth")
    train_model(cfg_b, feats_b, out / "bundle_b")
    bundle_b = load_bundle(out / "bundle_b")
    t = lap("features_train_b", t)
    ev = evaluation_rows(feats_b, eval_years)
    ev_a = frame.join(ev.select("patient_id", "year"), on=["patient_id", "year"], how="semi").sort(
        "patient_id", "year"
    )
    if ev_a.height != ev.height or not ev_a["patient_id"].equals(ev["patient_id"]):
        raise RuntimeError("evaluation rows: model A's feature rows do not match the labelled rows")
    pa, pb = bundle_a.predict_proba(ev_a), bundle_b.predict_proba(ev)
    groups = ev["patient_id"].to_numpy()
    comparison: dict[str, Any] = {
        "eval_years": list(eval_years),
        "rows": ev.height,
        "rows_by_split": dict(ev.group_by("split").len().sort("split").iter_rows()),
    }
    for lab, col in (("recorded", "label_rec"), ("true", "eval_label_true")):
        y = ev[col].cast(pl.Float64).to_numpy()
        comparison[lab] = _compare(y, pa, pb, groups, n_boot)
        comparison[lab]["per_year"] = {}
        for year in range(eval_years[0], eval_years[1] + 1):
            m = (ev["year"] == year).to_numpy()
            comparison[lab]["per_year"][str(year)] = _compare(y[m], pa[m], pb[m], groups[m], n_boot)
    t = lap("compare", t)

    # Drift of the latest years against B's own reference.
    spec_b = FeatureSpec.from_json(out / "bundle_b" / "feature_spec.json")
    frame_b = (
        build_feature_frame(validated, spec_b).collect().join(serving, on=["patient_id", "year"], how="semi")
    )
    after: dict[str, Any] = {}
    for year in (eval_years[1], REPLAY_YEARS[-1]):
        rows_b = frame_b.filter(pl.col("year") == year)
        rows_b = rows_b.with_columns(pl.Series("probability", bundle_b.predict_proba(rows_b)))
        after[str(year)] = {
            key: _drift_entry(drift_report(bundle_b.reference, rows_b, variants[key]))
            for key in ("unweighted", "adjusted")
        }
    lap("drift_after", t)
    result = {
        "patients": patients,
        "secular_drift": secular_drift,
        "standardise_by": std_by,
        "extra_calendar_trend_features": more_trend,
        "decision_variant": "adjusted",
        "plan": plan,
        "first_retrain_year": first,
        "replay": replay,
        "comparison": comparison,
        "drift_vs_model_b": after,
        "model_a": bundle_a.version,
        "model_b": bundle_b.version,
        "timings_s": timings,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (out / "demo_drift.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def summary_lines(r: dict[str, Any]) -> list[str]:
    """Human-readable summary of a result of :func:`run_demo`."""
    pop = "secular drift" if r["secular_drift"] else "control (no secular drift)"
    p = r["plan"]
    lines = [
        f"population: {pop}; patients {r['patients']}; standardise_by {r['standardise_by']}",
        f"A train {p['a']['train_years']} val {p['a']['validation_years']}; B train {p['b']['train_years']} "
        f"val {p['b']['validation_years']}; eval {p['eval_years']} (B's last label year "
        f"{p['last_training_label_year']['b']}, first eval outcome year {p['first_eval_outcome_year']})",
        "first retrain year: " + ", ".join(f"{k} {v}" for k, v in r["first_retrain_year"].items()),
        "year   rows  age   | drifted features (R = retrain): unw  age_std  locf_trend  adjusted "
        "| scorePSI unw  adj | ESS  unmatched | adjusted: drifted features",
    ]
    for e in r["replay"]:
        u, a = e["unweighted"], e["adjusted"]
        counts = "  ".join(
            f"{e[k]['n_drifted_features']:3d}{'R' if e[k]['decision'] == 'retrain' else ' '}"
            for k in ("unweighted", "age_standardised", "locf_as_trend", "adjusted")
        )
        lines.append(
            f"{e['year']} {e['rows']:6d} {e['mean_age']:.1f} | {counts} | {u['score_psi']:.4f} {a['score_psi']:.4f}"
            f" | {a['effective_rows']:.0f} {a['unmatched_reference_share']:.3f} | {','.join(a['drifted_features'][:6])}"
        )
    c = r["comparison"]
    for lab in ("recorded", "true"):
        x = c[lab]
        d = x["b_minus_a"]
        lines.append(
            f"{lab} labels, {x['rows']} rows / {x['patients']} patients, prevalence {x['prevalence']:.4f}: "
            f"A ap {x['model_a']['ap']:.4f} brier {x['model_a']['brier']:.5f} mean_p {x['model_a']['mean_p']:.4f}; "
            f"B ap {x['model_b']['ap']:.4f} brier {x['model_b']['brier']:.5f} mean_p {x['model_b']['mean_p']:.4f}"
        )
        lines.append(
            "  B−A "
            + "; ".join(f"{k} {v['diff']:+.5f} [{v['lo']:+.5f}, {v['hi']:+.5f}]" for k, v in d.items())
        )
    for year, a in r["drift_vs_model_b"].items():
        lines.append(
            f"drift {year} vs B: unweighted {a['unweighted']['n_drifted_features']} drifted "
            f"({a['unweighted']['decision']}), adjusted {a['adjusted']['n_drifted_features']} "
            f"({a['adjusted']['decision']})"
        )
    lines.append(f"timings {r['timings_s']}; wall {r['wall_s']} s")
    return lines


VARIANTS = ("unweighted", "age_standardised", "locf_as_trend", "adjusted")


def _ci(d: dict[str, float], digits: int) -> str:
    return f"{d['diff']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]"


def markdown_tables(results: dict[str, dict[str, Any]]) -> list[str]:
    """The result tables of docs/experiments/drift_retrain.md from ``{population name: demo_drift.json}``:
    first retrain year per variant, the per-year replay, and B vs A pooled and per evaluation year."""
    L = ["| first retrain year | " + " | ".join(VARIANTS) + " |", "|---" * (len(VARIANTS) + 1) + "|"]
    L += [
        f"| {name} | " + " | ".join(str(r["first_retrain_year"][v]) for v in VARIANTS) + " |"
        for name, r in results.items()
    ]
    for name, r in results.items():
        L += [
            "",
            f"**{name}** — drifted features (PSI > 0.25; R = the job says retrain), score PSI / KS:",
            "",
            "| year | rows | mean age | unweighted | age-standardised | `*_locf` as trend | adjusted (both) "
            "| score PSI unw / adj | adjusted: ESS, unmatched ref. share | adjusted: drifted features / other reasons |",
            "|---" * 10 + "|",
        ]
        for e in r["replay"]:
            counts = " | ".join(
                f"{e[v]['n_drifted_features']}{' R' if e[v]['decision'] == 'retrain' else ''}"
                for v in VARIANTS
            )
            a = e["adjusted"]
            feats = ", ".join(a["drifted_features"][:4]) + (" …" if len(a["drifted_features"]) > 4 else "")
            other = [x for x in a["reasons"] if "features with PSI" not in x]
            why = "; ".join(x for x in (feats, *other) if x)
            L.append(
                f"| {e['year']} | {e['rows']} | {e['mean_age']} | {counts} | "
                f"{e['unweighted']['score_psi']:.3f} / {a['score_psi']:.3f} | "
                f"{a['effective_rows']:.0f}, {a['unmatched_reference_share']:.2f} | {why} |"
            )
    L += [
        "",
        "| population | labels | rows / patients | prevalence | A: AP / Brier / mean p | B: AP / Brier / mean p "
        "| B−A AP [95 % CI] | B−A Brier [95 % CI] | B−A AUC [95 % CI] |",
        "|---" * 9 + "|",
    ]
    for name, r in results.items():
        for lab in ("recorded", "true"):
            x = r["comparison"][lab]
            a, b, d = x["model_a"], x["model_b"], x["b_minus_a"]
            L.append(
                f"| {name} | {lab} | {x['rows']} / {x['patients']} | {x['prevalence']:.4f} | "
                f"{a['ap']:.4f} / {a['brier']:.5f} / {a['mean_p']:.4f} | {b['ap']:.4f} / {b['brier']:.5f} / "
                f"{b['mean_p']:.4f} | {_ci(d['ap'], 4)} | {_ci(d['brier'], 5)} | {_ci(d['auc'], 4)} |"
            )
    L += [
        "",
        "| population | labels | year | rows | prevalence | A mean p | B mean p | B−A AP | B−A Brier |",
        "|---" * 9 + "|",
    ]
    for name, r in results.items():
        for lab in ("recorded", "true"):
            for year, x in r["comparison"][lab]["per_year"].items():
                d = x["b_minus_a"]
                L.append(
                    f"| {name} | {lab} | {year} | {x['rows']} | {x['prevalence']:.4f} | "
                    f"{x['model_a']['mean_p']:.4f} | {x['model_b']['mean_p']:.4f} | {_ci(d['ap'], 4)} | "
                    f"{_ci(d['brier'], 5)} |"
                )
    L += ["", "| population | year | vs B: unweighted | vs B: adjusted |", "|---|---|---|---|"]
    for name, r in results.items():
        for year, a in r["drift_vs_model_b"].items():
            L.append(
                f"| {name} | {year} | {a['unweighted']['n_drifted_features']} ({a['unweighted']['decision']}) | "
                f"{a['adjusted']['n_drifted_features']} ({a['adjusted']['decision']}) |"
            )
    return L


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--patients", type=int, default=40_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/drift_demo/drift"))
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument(
        "--secular-drift", action=argparse.BooleanOptionalAction, default=True, help="generator drift"
    )
    ap.add_argument(
        "--standardise-by",
        default="age",
        help="comma-separated features for the standardised drift job ('' = none)",
    )
    ap.add_argument(
        "--extra-trend",
        default="*_locf",
        help="comma-separated globs added to monitoring.calendar_trend_features in the adjusted job",
    )
    ap.add_argument("--eval-years", type=int, nargs=2, default=[2018, 2020], metavar=("FIRST", "LAST"))
    ap.add_argument(
        "--report",
        type=Path,
        nargs=2,
        metavar=("SECULAR_JSON", "CONTROL_JSON"),
        help="print the Markdown tables of two finished runs (demo_drift.json) and exit",
    )
    args = ap.parse_args(argv)
    if args.report:
        runs = {"secular drift": args.report[0], "control (`--no-secular-drift`)": args.report[1]}
        try:
            loaded = {k: json.loads(Path(v).read_text()) for k, v in runs.items()}
            print("\n".join(markdown_tables(loaded)))
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: --report: {exc}", file=sys.stderr)
            raise SystemExit(2) from exc
        return loaded
    std = [f for f in str(args.standardise_by).split(",") if f.strip()]
    r = run_demo(
        args.out,
        args.patients,
        secular_drift=bool(args.secular_drift),
        standardise_by=std,
        extra_trend=[f for f in str(args.extra_trend).split(",") if f.strip()],
        eval_years=(args.eval_years[0], args.eval_years[1]),
        n_boot=args.bootstrap,
    )
    print("\n".join(summary_lines(r)))
    print(f"full result: {args.out.resolve() / 'demo_drift.json'}")
    return r


if __name__ == "__main__":
    main()
