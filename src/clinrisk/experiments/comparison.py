"""Comparing a suite's runs: paired bootstrap deltas vs the baseline on joined predictions, and the winner
rules (best_with_ci, one_se)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from clinrisk.errors import DataError
from clinrisk.experiments.render import publish_comparison, render_comparison
from clinrisk.experiments.running import locate_outputs
from clinrisk.experiments.suite import (
    LABEL_COLUMNS,
    METRIC_DIRECTION,
    TABLE_METRICS,
    SuiteSpec,
    WinnerRule,
    baseline_pairs,
)
from clinrisk.experiments.units import compare_unit_runs, experiment_hooks
from clinrisk.io import read_json


def _read_predictions(path: str | Path) -> pl.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: predictions file not found")
    df = pl.read_parquet(p)
    need = ["patient_id", "year", "probability", "label_rec", "eval_label_true"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{p}: predictions lack column(s) {missing}")
    return df


def _validation_predictions(entry: dict[str, Any]) -> pl.DataFrame:
    """Score the run's validation split with its bundle (for rules on the validation split)."""
    from clinrisk.bundle import load_bundle
    from clinrisk.evaluate import load_test_frame

    where = dict(entry)
    if entry.get("pipeline_dir") and Path(entry["pipeline_dir"]).is_dir():
        where.update(
            locate_outputs(Path(entry["pipeline_dir"]))
        )  # re-located: older results recorded wrong dirs
    if not where.get("bundle_dir") or not where.get("features_dir"):
        raise DataError(f"run {entry['name']}: bundle/features not available locally for validation scoring")
    bundle = load_bundle(Path(where["bundle_dir"]))
    df = load_test_frame(Path(where["features_dir"]), split="validation")
    p = np.asarray(bundle.predict_proba(df), dtype=np.float64)
    return pl.DataFrame(
        {
            "patient_id": df["patient_id"],
            "year": df["year"],
            "probability": p,
            "label_rec": df["label_rec"].cast(pl.Int8),
            "eval_label_true": df["eval_label_true"].cast(pl.Int8),
            "eval_oracle_risk": df["eval_oracle_risk"].cast(pl.Float64),
        }
    )


def point_metrics(df: pl.DataFrame, p_t: float) -> dict[str, dict[str, float]]:
    """Brier, AP, NB@p_t, AUC, log-loss, O/E, calibration slope vs true and recorded labels
    (+ excess Brier vs the oracle risk when the predictions carry ``eval_oracle_risk``)."""
    from clinrisk import metrics as M

    p = df["probability"].cast(pl.Float64).to_numpy()
    po = df["eval_oracle_risk"].cast(pl.Float64).to_numpy() if "eval_oracle_risk" in df.columns else None
    out: dict[str, dict[str, float]] = {}
    for lab, col in LABEL_COLUMNS.items():
        y = df[col].cast(pl.Float64).to_numpy()
        panel = M.metric_panel(y, p, tau=p_t, p_t=p_t, p_oracle=po)
        keep = ["brier", "ap", "net_benefit", "auc", "log_loss", "oe", "cal_slope", "prevalence"]
        if po is not None:
            keep.append("excess_brier")
        out[lab] = {k: float(panel[k][0]) for k in keep}
    return out


def paired_deltas(
    base: pl.DataFrame, run: pl.DataFrame, p_t: float, n_boot: int, seed: int, alpha: float
) -> dict[str, Any]:
    """Paired patient-cluster bootstrap of run − baseline on the rows both scored (join on patient, year)."""
    from clinrisk import metrics as M

    keys = ["patient_id", "year"]
    cols = ["probability", "label_rec", "eval_label_true"]
    j = (
        base.select([*keys, *cols])
        .join(run.select([*keys, *cols]), on=keys, how="inner", suffix="_run")
        .sort(keys)
    )
    info: dict[str, Any] = {
        "n_common_rows": j.height,
        "n_baseline_rows": base.height,
        "n_run_rows": run.height,
    }
    if j.height == 0:
        info["error"] = "no common (patient_id, year) rows: runs are on different data"
        return info
    for col in LABEL_COLUMNS.values():
        if not (j[col] == j[f"{col}_run"]).all():
            info["error"] = (
                f"{col} differs between the runs on common rows: different data/labels, so no paired "
                "comparison (compare arms within the same cell)"
            )
            return info
    pa = j["probability"].cast(pl.Float64).to_numpy()
    pb = j["probability_run"].cast(pl.Float64).to_numpy()
    g = j["patient_id"].to_numpy()
    for lab, col in LABEL_COLUMNS.items():
        y = j[col].cast(pl.Float64).to_numpy()
        d = M.paired_bootstrap_diff(y, pa, pb, g, tau=p_t, p_t=p_t, n_boot=n_boot, seed=seed, alpha=alpha)
        info[lab] = {k: d[k] for k in TABLE_METRICS if k in d}
    return info


def selection_summary(selection_file: str | None) -> dict[str, Any] | None:
    """The selection step's own numbers for a run (None when selection was disabled or is unavailable):
    feature counts, its validation ΔAP/ΔBrier vs the full set, and whether training used the selection
    (only when it passed its non-inferiority check; otherwise training falls back to all features)."""
    if not selection_file or not Path(selection_file).is_file():
        return None
    doc = read_json(Path(selection_file))
    if not doc.get("enabled", True) or "evaluation" not in doc:
        return None
    ev = doc.get("evaluation") or {}
    res = doc.get("resources") or {}
    return {
        "n_features_before": doc.get("n_features_before"),
        "n_features_selected": doc.get("n_features_selected"),
        "validation_delta_ap": ev.get("delta_ap"),
        "validation_delta_brier": ev.get("delta_brier"),
        "validation_rows": ev.get("validation_rows"),
        "acceptable": ev.get("acceptable"),
        "used_for_training": ev.get("acceptable") is not False,
        "peak_rss_mb": res.get("peak_rss_mb"),
        "wall_s": res.get("wall_s"),
    }


def _improves(metric: str, delta: dict[str, float]) -> bool:
    """The paired CI excludes 0 on the improving side."""
    if METRIC_DIRECTION[metric] == "lower":
        return bool(delta["hi"] < 0)
    return bool(delta["lo"] > 0)


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if METRIC_DIRECTION[metric] == "lower" else a > b


def choose_winner(rows: list[dict[str, Any]], rule: WinnerRule) -> list[dict[str, Any]]:
    """Apply a ``best_with_ci`` rule per cell to comparison rows; returns one verdict per cell."""
    verdicts = []
    cells: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault(r.get("cell"), []).append(r)
    for cell, rs in cells.items():
        base = next((r for r in rs if r["is_baseline"]), None)
        cands = []
        for r in rs:
            if r["is_baseline"] or r.get("status") != "ok":
                continue
            d = ((r.get("delta") or {}).get(rule.labels) or {}).get(rule.metric)
            if d and math.isfinite(d["lo"]) and _improves(rule.metric, d):
                cands.append(r)
        if cands:
            best = cands[0]
            for r in cands[1:]:
                if _better(
                    rule.metric,
                    r["metrics"][rule.labels][rule.metric],
                    best["metrics"][rule.labels][rule.metric],
                ):
                    best = r
            why = (
                f"{best['name']}: {rule.labels}-label {rule.metric} "
                f"{best['metrics'][rule.labels][rule.metric]:.5f}, paired Δ vs baseline "
                f"{best['delta'][rule.labels][rule.metric]['diff']:+.5f} "
                f"[{best['delta'][rule.labels][rule.metric]['lo']:+.5f}, "
                f"{best['delta'][rule.labels][rule.metric]['hi']:+.5f}]"
            )
            verdicts.append({"cell": cell, "winner": best["name"], "reason": why})
        else:
            verdicts.append(
                {
                    "cell": cell,
                    "winner": base["name"] if base else None,
                    "reason": "no arm's paired CI excludes 0 in the improving direction: baseline kept",
                }
            )
    return verdicts


def _paired_join(
    best: pl.DataFrame, arm: pl.DataFrame, label_col: str, names: tuple[str, str]
) -> pl.DataFrame:
    """Rows both arms scored, joined on (patient_id, year); errors when none or when labels disagree."""
    keys = ["patient_id", "year"]
    cols = [*keys, "probability", label_col]
    j = best.select(cols).join(arm.select(cols), on=keys, how="inner", suffix="_arm").sort(keys)
    if j.height == 0:
        raise DataError(
            f"one_se rule: arms {names[0]} and {names[1]} share no (patient_id, year) rows; "
            "a paired SE needs both arms scored on the same patients"
        )
    if not (j[label_col] == j[f"{label_col}_arm"]).all():
        raise DataError(
            f"one_se rule: {label_col} differs between arms {names[0]} and {names[1]} on common rows "
            "(different data), so no paired comparison"
        )
    return j


def one_se_winner(
    frames: dict[str, pl.DataFrame], order: list[str], rule: WinnerRule, p_t: float, n_boot: int, seed: int
) -> dict[str, Any]:
    """Paired one-SE rule: the first arm in ``order`` whose gap to the best arm is within one SE of the
    paired difference.

    Best = best point metric (each arm on its own rows). For every other arm, both arms' predictions are
    joined on (patient_id, year) and one patient-cluster bootstrap (patients resampled once per replicate,
    applied to both arms) gives the difference arm − best and its SE. The gap is best − arm (arm − best for
    lower-is-better metrics); an arm is eligible when gap ≤ SE. The single-arm (unpaired) SE is kept in
    ``per_run`` for comparison only.
    """
    from clinrisk import metrics as M

    if not order:
        raise DataError("one_se rule: no arms to choose from")
    col = LABEL_COLUMNS[rule.labels]
    lower = METRIC_DIRECTION[rule.metric] == "lower"
    stats: dict[str, dict[str, Any]] = {}
    for name in order:
        df = frames[name]
        y = df[col].cast(pl.Float64).to_numpy()
        p = df["probability"].cast(pl.Float64).to_numpy()
        b = M.bootstrap_panel(y, p, df["patient_id"].to_numpy(), tau=p_t, p_t=p_t, n_boot=n_boot, seed=seed)
        stats[name] = {
            "value": b[rule.metric]["value"],
            "se_unpaired": b[rule.metric]["se"],
            "n_rows": df.height,
        }
    best = order[0]
    for name in order[1:]:
        if _better(rule.metric, stats[name]["value"], stats[best]["value"]):
            best = name
    for name in order:
        s = stats[name]
        if name == best:
            s.update(diff_vs_best=0.0, gap=0.0, se_paired=0.0, n_paired_rows=s["n_rows"], eligible=True)
            continue
        j = _paired_join(frames[best], frames[name], col, (best, name))
        d = M.paired_bootstrap_diff(
            j[col].cast(pl.Float64).to_numpy(),
            j["probability"].cast(pl.Float64).to_numpy(),
            j["probability_arm"].cast(pl.Float64).to_numpy(),
            j["patient_id"].to_numpy(),
            tau=p_t,
            p_t=p_t,
            n_boot=n_boot,
            seed=seed,
        )[rule.metric]
        diff, se = float(d["diff"]), float(d["se"])  # arm − best on the paired rows
        gap = diff if lower else -diff
        s.update(
            diff_vs_best=diff,
            gap=gap,
            se_paired=se,
            n_paired_rows=j.height,
            eligible=bool(math.isfinite(gap) and math.isfinite(se) and gap <= se),
        )
    winner = next(n for n in order if stats[n]["eligible"])
    w = stats[winner]
    return {
        "cell": None,
        "winner": winner,
        "best": best,
        "best_value": stats[best]["value"],
        "per_run": stats,
        "reason": (
            f"best {best} ({rule.metric} {stats[best]['value']:.5f}); first arm in order within one paired SE "
            f"of it is {winner} ({rule.metric} {w['value']:.5f}, paired Δ vs best {w['diff_vs_best']:+.5f}, "
            f"SE {w['se_paired']:.5f}, {w['n_paired_rows']} paired rows)"
        ),
    }


def compare_runs(
    suite_result: dict[str, Any] | str | Path,
    out_dir: Path | None = None,
    *,
    n_boot: int | None = None,
    seed: int = 0,
    ci_level: float = 0.95,
) -> dict[str, Any]:
    """Comparison report of a suite result (dict or path to ``suite_result.json``): writes
    ``comparison.json`` and ``comparison.md`` into ``out_dir`` (default: the suite directory)."""
    res: dict[str, Any] = (
        suite_result if isinstance(suite_result, dict) else dict(read_json(Path(suite_result)))
    )
    hooks = experiment_hooks(res.get("usecase"))
    if hooks is not None:  # per-unit scores of a use case's own model (e.g. Dice per validation image)
        return compare_unit_runs(res, hooks, out_dir, n_boot=int(n_boot or 200), seed=seed, ci_level=ci_level)
    suite = SuiteSpec.model_validate(res["suite"])
    rule = suite.winner
    p_t = float(res.get("p_t") or 0.10)
    B = int(n_boot or 200)
    alpha = 1.0 - ci_level
    entries = res["runs"]
    frames: dict[str, pl.DataFrame] = {}
    rows: list[dict[str, Any]] = []
    for e in entries:
        row: dict[str, Any] = {
            k: e.get(k)
            for k in (
                "name",
                "arm",
                "cell",
                "order",
                "baseline",
                "is_baseline",
                "key_change",
                "status",
                "mlflow_run_id",
                "tracking_uri",
                "model_uri",
                "pipeline_dir",
                "peak_rss_mb",
                "error",
            )
        }
        row["mlflow_run_uri"] = f"runs:/{e['mlflow_run_id']}" if e.get("mlflow_run_id") else None
        row["selection"] = selection_summary(e.get("selection_file"))
        if e.get("status") == "ok":
            try:
                frames[e["name"]] = _read_predictions(e["predictions"])
                row["metrics"] = point_metrics(frames[e["name"]], p_t)
                row["n_test_rows"] = frames[e["name"]].height
            except (DataError, KeyError, TypeError) as exc:
                row["status"] = "failed"
                row["error"] = f"predictions unusable: {exc}"
        rows.append(row)
    for r, b in baseline_pairs(rows):
        r["delta"] = paired_deltas(frames[b["name"]], frames[r["name"]], p_t, B, seed, alpha)
    ok = [r for r in rows if r.get("status") == "ok"]
    if rule.rule == "best_with_ci":
        winners = choose_winner(rows, rule)
    elif not ok:
        winners = []
    else:
        winners = []
        cells_ok: dict[Any, list[dict[str, Any]]] = {}
        for r in sorted(ok, key=lambda r: (r.get("cell") or "", r["order"])):
            cells_ok.setdefault(r.get("cell"), []).append(r)
        for cell, rs in cells_ok.items():
            order = [r["name"] for r in rs]
            if rule.split == "validation":
                val = {n: _validation_predictions(next(e for e in entries if e["name"] == n)) for n in order}
            else:
                val = {n: frames[n] for n in order}
            winners.append({**one_se_winner(val, order, rule, p_t, B, seed), "cell": cell})
    report = {
        "suite": suite.name,
        "description": suite.description,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "p_t": p_t,
        "bootstrap_replicates": B,
        "ci_level": ci_level,
        "winner_rule": {**rule.model_dump(), "statement": rule.statement()},
        "winners": winners,
        "tracking_uri": res.get("tracking_uri"),
        "experiment": res.get("experiment"),
        "runs": rows,
    }
    dest = Path(out_dir) if out_dir is not None else Path(res.get("suite_dir") or ".")
    return publish_comparison(report, dest, render_comparison(report), suite.name)
