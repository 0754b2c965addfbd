"""Drift of served traffic against the training reference in the model bundle.

Per feature: PSI over the reference bins (numeric: the reference quantile edges, bins
``(-inf, e1), [e1, e2), ..., [ek, inf)`` as in ``reference_stats.json``; categorical: the spec levels),
with *missing* as one more bin, so a change in testing frequency shows up as drift. Score: PSI over the
reference score deciles and a KS statistic evaluated at those deciles (a lower bound on the exact KS,
since the bundle keeps only the binned reference). Out-of-range: per numeric feature, the share of rows
outside the training [min, max]; the criterion is the largest such share, not the share of rows with
*any* feature out of range (also reported): with ~150 features the union of pure sampling tails (each
new value beyond the max of n reference values has probability ~1/n) is already several percent.

Features matched by ``monitoring.calendar_trend_features`` (age, history_years, *_years_since, *_ever)
rise with calendar time for every followed patient, so a later year exceeds the training range and
shifts their distribution by construction: their PSI and out-of-range shares are reported (flagged
``calendar_trend``) but neither counts towards retraining, which would otherwise fire on elapsed time
rather than on a changed population. The verdict is "retrain" when a bound of ``MonitoringConfig`` is
crossed.

Outputs: ``report.json``, ``report.md`` and ``metrics.prom`` (Prometheus text exposition format, for the
node-exporter textfile collector or a Pushgateway), and MLflow metrics.
"""

from __future__ import annotations

import fnmatch
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from clinrisk.config import ClinriskConfig, MonitoringConfig
from clinrisk.errors import DataError
from clinrisk.io import atomic_output_dir, json_safe, write_json
from clinrisk.request_log import PROBABILITY

FloatArray = npt.NDArray[np.float64]
RETRAIN, OK, INSUFFICIENT = "retrain", "ok", "insufficient_data"
OTHER_LEVEL = "__OTHER__"


# ------------------------------------------------------------------------------------------ statistics


def psi(reference: Any, current: Any, floor: float = 1e-4) -> float:
    """Population stability index Σ (c − r)·ln(c / r) over matching bins (shares floored at ``floor``
    then renormalised, so empty bins stay finite)."""
    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    if r.shape != c.shape or r.ndim != 1 or r.size < 2:
        raise DataError(f"psi: need two share vectors of equal length >= 2, got {r.shape} and {c.shape}")
    if np.any(r < 0) or np.any(c < 0) or r.sum() <= 0 or c.sum() <= 0:
        raise DataError("psi: shares must be non-negative with a positive total")
    r = np.maximum(r / r.sum(), floor)
    c = np.maximum(c / c.sum(), floor)
    r, c = r / r.sum(), c / c.sum()
    return float(np.sum((c - r) * np.log(c / r)))


def _row_weights(weights: Any, n: int) -> FloatArray:
    """``weights`` as a float vector of length ``n`` (None = all ones); negative or non-finite is an error."""
    if weights is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise DataError(f"weights: need one weight per row ({n}), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise DataError("weights: must be finite and non-negative")
    return w


def numeric_bin_shares(values: Any, edges: Any, weights: Any = None) -> FloatArray:
    """Shares over bins ``(-inf, e1), [e1, e2), ..., [ek, inf)`` plus a final *missing* bin (NaN);
    with ``weights``, each row counts its weight (shares of the total weight)."""
    x = np.asarray(values, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    w = _row_weights(weights, x.size)
    ok = np.isfinite(x)
    idx = np.searchsorted(e, x[ok], side="right")
    counts = np.bincount(idx, weights=w[ok], minlength=e.size + 1).astype(np.float64)
    out = np.append(counts, float(w[~ok].sum()))
    total = float(w.sum())
    return out / total if total > 0 else out


def reference_numeric_shares(ref: dict[str, Any]) -> FloatArray:
    """The reference's bin shares (over finite values) rescaled to include its missing share as a bin."""
    shares = np.asarray(ref.get("shares") or [], dtype=np.float64)
    miss = float(ref.get("missing_share") or 0.0)
    return np.append(shares * (1.0 - miss), miss)


def categorical_codes(values: pl.Series, levels: list[str]) -> npt.NDArray[np.int64]:
    """Per row: index into ``levels``, ``len(levels)`` for missing, ``-1`` for an unknown value. Strings
    map by name (unknown → ``__OTHER__`` when it is a level); integer codes are indices into ``levels``."""
    k = len(levels)
    if values.dtype.is_integer() or values.dtype.is_float():
        codes = values.cast(pl.Float64).to_numpy()
        fin = np.isfinite(codes)
        ok = fin & (codes >= 0) & (codes < k)
        out = np.full(codes.size, -1, dtype=np.int64)
        out[ok] = codes[ok].astype(np.int64)
        out[~fin] = k
        return out
    lut = {lv: i for i, lv in enumerate(levels)}
    other = lut.get(OTHER_LEVEL, -1)
    return np.asarray(
        [k if v is None else lut.get(v, other) for v in values.cast(pl.String).to_list()], dtype=np.int64
    )


def categorical_shares(values: pl.Series, levels: list[str], weights: Any = None) -> FloatArray:
    """Shares over ``levels`` (+ missing bin), see :func:`categorical_codes`; unknown values count in
    ``__OTHER__`` when it is a level, else in no bin (so the shares then sum to less than 1). With
    ``weights``, each row counts its weight."""
    n = len(values)
    k = len(levels)
    w = _row_weights(weights, n)
    codes = categorical_codes(values, levels)
    if OTHER_LEVEL in levels:
        codes = np.where(codes < 0, levels.index(OTHER_LEVEL), codes)
    known = codes >= 0
    counts = np.bincount(codes[known], weights=w[known], minlength=k + 1).astype(np.float64)
    total = float(w.sum())
    return counts / total if total > 0 else counts


def ks_at_edges(ref_shares: Any, cur_values: Any, edges: Any, weights: Any = None) -> float:
    """max |F_ref − F_cur| at the reference bin edges (finite values only; ``weights`` → weighted CDF)."""
    r = np.asarray(ref_shares, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    x = np.asarray(cur_values, dtype=np.float64)
    w = _row_weights(weights, x.size)
    ok = np.isfinite(x)
    x, w = x[ok], w[ok]
    if x.size == 0 or e.size == 0 or w.sum() <= 0:
        return float("nan")
    f_ref = np.cumsum(r / r.sum())[:-1]  # CDF just below each edge e_k: share of bins left of it
    order = np.argsort(x, kind="stable")
    cw = np.concatenate([[0.0], np.cumsum(w[order])])
    f_cur = cw[np.searchsorted(x[order], e, side="left")] / cw[-1]
    return float(np.max(np.abs(f_ref - f_cur)))


# ----------------------------------------------------------------------------------------------- report


def _bounds(cfg: ClinriskConfig | MonitoringConfig) -> MonitoringConfig:
    return cfg.monitoring if isinstance(cfg, ClinriskConfig) else cfg


def is_calendar_trend(name: str, patterns: list[str]) -> bool:
    """Whether ``name`` matches one of the (case-sensitive fnmatch) calendar-trend patterns."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _reference_bins(
    name: str, ref: dict[str, Any], col: pl.Series
) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Per-row bin index of ``col`` in the reference bins of feature ``name`` (missing = last bin; an
    unknown category = -1) and the reference shares over those bins."""
    if ref.get("type") == "categorical":
        levels = [str(x) for x in ref["levels"]]
        miss = float(ref.get("missing_share") or 0.0)
        target = np.append(np.asarray(ref["shares"], dtype=np.float64) * (1 - miss), miss)
        codes = categorical_codes(col, levels)
        if OTHER_LEVEL in levels:
            codes = np.where(codes < 0, levels.index(OTHER_LEVEL), codes)
        return codes, target
    if not ref.get("edges"):
        raise DataError(f"monitoring.standardise_by: feature {name!r} has no reference bins (constant?)")
    x = col.cast(pl.Float64).fill_null(float("nan")).to_numpy()
    e = np.asarray(ref["edges"], dtype=np.float64)
    idx = np.where(np.isfinite(x), np.searchsorted(e, x, side="right"), e.size + 1)
    return idx.astype(np.int64), reference_numeric_shares(ref)


def standardisation_weights(
    reference: dict[str, Any],
    logged: pl.DataFrame,
    features: list[str],
    *,
    max_iter: int = 100,
    tol: float = 1e-9,
) -> tuple[FloatArray, dict[str, Any]]:
    """Row weights that give the logged rows the reference's distribution of ``features`` over the
    reference bins (direct standardisation, e.g. to the training population's age deciles).

    One feature: exact post-stratification, weight = reference share / current share of the row's bin.
    Several: raking (iterative proportional fitting) to each feature's reference margins, since the
    bundle keeps margins only. A reference bin with no current rows cannot be matched (its share is
    reported as ``unmatched_reference_share``); rows in a bin the reference never saw get weight 0.
    Weights are scaled to mean 1 over the rows. Returns the weights and a summary with the Kish
    effective number of rows ``(Σw)²/Σw²``.
    """
    feats_ref: dict[str, Any] = reference.get("features") or {}
    n = logged.height
    binned: list[tuple[npt.NDArray[np.int64], FloatArray]] = []
    for name in features:
        if name not in feats_ref:
            raise DataError(f"monitoring.standardise_by: {name!r} is not a feature of the reference")
        if name not in logged.columns:
            raise DataError(f"monitoring.standardise_by: {name!r} is not a column of the logged rows")
        binned.append(_reference_bins(name, feats_ref[name], logged[name]))
    w = np.ones(n, dtype=np.float64)
    unmatched = 0.0
    for _ in range(max_iter if len(binned) > 1 else 1):
        delta = 0.0
        for idx, target in binned:
            k = target.size
            ok = idx >= 0
            cur = np.bincount(idx[ok], weights=w[ok], minlength=k)[:k]
            tot = cur.sum()
            if tot <= 0:
                raise DataError("monitoring.standardise_by: no logged row falls in a reference bin")
            cur = cur / tot
            seen = cur > 0
            # reference mass in bins with no current rows cannot be reached: renormalise over the rest
            unmatched = max(unmatched, float(target[~seen].sum()))
            goal = np.where(seen, target, 0.0)
            goal = goal / goal.sum() if goal.sum() > 0 else goal
            delta = max(delta, float(np.max(np.abs(cur - goal))))
            factor = np.divide(goal, cur, out=np.zeros(k), where=seen)
            w = np.where(ok, w * factor[np.clip(idx, 0, k - 1)], 0.0)
        if delta < tol:
            break
    total = float(w.sum())
    if total <= 0:
        raise DataError("monitoring.standardise_by: every logged row got weight 0")
    w = w * (n / total)
    info = {
        "by": list(features),
        "effective_rows": float(w.sum() ** 2 / np.sum(w**2)),
        "zero_weight_rows": int(np.sum(w == 0)),
        "max_weight": float(w.max()),
        "unmatched_reference_share": unmatched,
    }
    return w, info


def drift_report(
    reference: dict[str, Any],
    logged: pl.DataFrame,
    cfg: ClinriskConfig | MonitoringConfig,
    *,
    score_column: str = PROBABILITY,
    weights: Any = None,
) -> dict[str, Any]:
    """Compare logged rows (feature columns + ``score_column``) with a bundle's ``reference_stats.json``.

    Features absent from the log are listed, not guessed. Returns a JSON-able report with ``decision``
    in {"retrain", "ok", "insufficient_data"} and the reasons.

    With ``monitoring.standardise_by`` (or explicit per-row ``weights``) every share, mean, out-of-range
    share and the score statistics are weighted, so the comparison is at the reference's distribution
    of those features (e.g. age-standardised); the standardising features themselves keep their
    unweighted PSI, flagged ``standardised`` and not counted. ``min_rows`` then applies to the
    effective number of rows.
    """
    mc = _bounds(cfg)
    feats_ref: dict[str, Any] = reference.get("features") or {}
    if not feats_ref:
        raise DataError("reference_stats: no 'features' entry")
    n = logged.height
    std_by = list(mc.standardise_by)
    standardisation: dict[str, Any] | None = None
    if weights is not None and std_by:
        raise DataError("drift_report: pass weights or set monitoring.standardise_by, not both")
    if std_by and n:
        weights, standardisation = standardisation_weights(reference, logged, std_by)
    w = _row_weights(weights, n)
    n_eff = float(w.sum() ** 2 / np.sum(w**2)) if n and w.sum() > 0 else 0.0
    if weights is not None and standardisation is None:
        standardisation = {"by": [], "effective_rows": n_eff}
    weighted = weights is not None

    rows: list[dict[str, Any]] = []
    absent: list[str] = []
    oor_any = np.zeros(n, dtype=bool)
    for name, ref in feats_ref.items():
        if name not in logged.columns:
            absent.append(name)
            continue
        entry, out = _feature_drift(name, ref, logged[name], mc, w if weighted else None)
        if out is not None and not entry["calendar_trend"] and not entry.get("standardised"):
            oor_any |= out
        rows.append(entry)
    rows.sort(key=lambda e: -(e["psi"] if math.isfinite(e["psi"]) else -1))
    score = _score_drift(reference, logged, score_column, mc, w if weighted else None)
    oor_rate = (_weighted_share(w, oor_any) if weighted else float(oor_any.mean())) if n else 0.0
    verdict = _decide(rows, score, mc, n, n_eff if weighted else None)
    finite = [e["psi"] for e in rows if math.isfinite(e["psi"])]
    return {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_rows": n,
        "n_features_compared": len(rows),
        "features_absent_from_log": absent,
        "features": rows,
        "max_feature_psi": max(finite) if finite else None,
        "n_drifted_features": len(verdict["drifted"]),
        "drifted_features": verdict["drifted"],
        "score": score,
        "drifted_calendar_trend_features": [
            e["feature"] for e in rows if e["drifted"] and e["calendar_trend"]
        ],
        "out_of_range_rate": oor_rate,
        "max_feature_out_of_range": verdict["max_oor"],
        "max_out_of_range_feature": verdict["worst"],
        "calendar_trend_features": [e["feature"] for e in rows if e["calendar_trend"]],
        "standardisation": standardisation,
        "bounds": mc.model_dump(mode="json"),
        "decision": verdict["decision"],
        "reasons": verdict["reasons"],
    }


def _weighted_share(w: FloatArray, mask: Any) -> float:
    """The weighted share of the rows in ``mask`` (0 when the weights sum to 0)."""
    wsum = float(w.sum())
    return float(np.sum(w[mask]) / wsum) if wsum > 0 else 0.0


def _feature_drift(
    name: str, ref: dict[str, Any], col: pl.Series, mc: MonitoringConfig, w: FloatArray | None
) -> tuple[dict[str, Any], npt.NDArray[np.bool_] | None]:
    """One feature's drift entry (PSI vs the reference bins, missing and out-of-range shares, mean) and, for
    a numeric feature, its rows outside the training range. ``w``: the row weights when weighted."""
    n = col.len()
    trend = is_calendar_trend(name, mc.calendar_trend_features)
    std = name in mc.standardise_by
    fw = None if (w is None or std) else w  # a standardising feature: its raw shift
    entry: dict[str, Any] = {"feature": name, "type": ref.get("type", "numeric"), "calendar_trend": trend}
    if std:
        entry["standardised"] = True
    out: npt.NDArray[np.bool_] | None = None
    if ref.get("type") == "categorical":
        levels = [str(x) for x in ref["levels"]]
        r = np.append(
            np.asarray(ref["shares"], dtype=np.float64) * (1 - ref["missing_share"]), ref["missing_share"]
        )
        c = categorical_shares(col, levels, fw)
        entry["missing_share"] = float(c[-1])
    else:
        x = col.cast(pl.Float64).fill_null(float("nan")).to_numpy()
        ok = np.isfinite(x)
        if ref.get("edges"):
            r = reference_numeric_shares(ref)
            c = numeric_bin_shares(x, ref["edges"], fw)
        else:  # constant or all-missing in training: present-vs-missing only
            miss = float(ref.get("missing_share") or 0.0)
            r = np.array([1 - miss, miss])
            present = (_weighted_share(fw, ok) if fw is not None else float(ok.mean())) if n else 0.0
            c = np.array([present, 1 - present if n else 0.0])
        lo, hi = ref.get("min"), ref.get("max")
        out = np.zeros(n, dtype=bool)
        if lo is not None and hi is not None:
            out = ok & ((x < lo) | (x > hi))
        if not n:
            entry["out_of_range_share"] = entry["missing_share"] = 0.0
        elif fw is None:
            entry["out_of_range_share"] = float(out.mean())
            entry["missing_share"] = float((~ok).mean())
        else:
            entry["out_of_range_share"] = _weighted_share(fw, out)
            entry["missing_share"] = _weighted_share(fw, ~ok)
        fin_w = (fw if fw is not None else np.ones(n))[ok]
        entry["mean"] = float(np.sum(x[ok] * fin_w) / fin_w.sum()) if ok.any() and fin_w.sum() > 0 else None
        entry["reference_mean"] = ref.get("mean")
    entry["reference_missing_share"] = float(ref.get("missing_share") or 0.0)
    entry["psi"] = psi(r, c, mc.psi_floor) if n else float("nan")
    entry["drifted"] = bool(n and entry["psi"] > mc.psi_feature_bound)
    return entry, out


def _score_drift(
    reference: dict[str, Any],
    logged: pl.DataFrame,
    score_column: str,
    mc: MonitoringConfig,
    w: FloatArray | None,
) -> dict[str, Any]:
    """PSI and KS of the logged score vs the reference's score bins ({"available": False} without both)."""
    sref = reference.get("score") or {}
    edges = sref.get("edges") or []
    if score_column not in logged.columns or not logged.height or not edges:
        return {"available": False}
    s = logged[score_column].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    r = np.asarray(sref["shares"], dtype=np.float64)
    c = numeric_bin_shares(s, edges, w)[:-1]
    c = c / max(c.sum(), 1e-12)
    sok = np.isfinite(s)
    ww = w if w is not None else np.ones(s.size)
    return {
        "available": True,
        "psi": psi(r, c, mc.psi_floor),
        "ks": ks_at_edges(r, s, edges, w),
        "mean": float(np.sum(s[sok] * ww[sok]) / max(ww[sok].sum(), 1e-12)),
        "reference_mean": sref.get("mean"),
        "n_bins": len(edges) + 1,
    }


def _decide(
    rows: list[dict[str, Any]], score: dict[str, Any], mc: MonitoringConfig, n: int, n_eff: float | None
) -> dict[str, Any]:
    """The decision and its reasons from the counted features (neither calendar-trend nor standardising),
    the score and the out-of-range shares; ``n_eff`` is the effective row count when weighted."""
    counted = [e for e in rows if not e["calendar_trend"] and not e.get("standardised")]
    drifted = [e["feature"] for e in counted if e["drifted"]]
    oor_feats = [e for e in counted if "out_of_range_share" in e]
    worst = max(oor_feats, key=lambda e: e["out_of_range_share"], default=None)
    max_oor = float(worst["out_of_range_share"]) if worst is not None else 0.0
    reasons: list[str] = []
    if n_eff is not None and n_eff < mc.min_rows:
        decision = INSUFFICIENT
        reasons.append(f"only {n_eff:.0f} effective (weighted) rows (< monitoring.min_rows = {mc.min_rows})")
    elif n < mc.min_rows:
        decision = INSUFFICIENT
        reasons.append(f"only {n} logged rows (< monitoring.min_rows = {mc.min_rows})")
    else:
        if len(drifted) >= mc.min_drifted_features:
            reasons.append(
                f"{len(drifted)} features with PSI > {mc.psi_feature_bound:g} "
                f"(>= {mc.min_drifted_features}): {', '.join(drifted[:10])}"
            )
        if score.get("available"):
            if score["psi"] > mc.psi_score_bound:
                reasons.append(f"score PSI {score['psi']:.4f} > {mc.psi_score_bound:g}")
            if math.isfinite(score["ks"]) and score["ks"] > mc.ks_score_bound:
                reasons.append(f"score KS {score['ks']:.4f} > {mc.ks_score_bound:g}")
        if worst is not None and max_oor > mc.out_of_range_bound:
            reasons.append(
                f"{worst['feature']}: out-of-training-range share {max_oor:.4f} > {mc.out_of_range_bound:g}"
            )
        decision = RETRAIN if reasons else OK
    return {
        "decision": decision,
        "reasons": reasons,
        "drifted": drifted,
        "max_oor": max_oor,
        "worst": worst["feature"] if worst is not None else None,
    }


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The few numbers exported to Prometheus and MLflow."""
    s = report.get("score") or {}
    out = {
        "drift_rows": float(report["n_rows"]),
        "drift_max_feature_psi": float(report["max_feature_psi"] or 0.0),
        "drift_n_drifted_features": float(report["n_drifted_features"]),
        "drift_out_of_range_rate": float(report["out_of_range_rate"]),
        "drift_max_feature_out_of_range": float(report.get("max_feature_out_of_range") or 0.0),
        "drift_retrain": 1.0 if report["decision"] == RETRAIN else 0.0,
    }
    if s.get("available"):
        out["drift_score_psi"] = float(s["psi"])
        out["drift_score_ks"] = float(s["ks"])
        out["drift_score_mean"] = float(s["mean"])
    return out


def _prom_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(report: dict[str, Any], model_version: str | None = None) -> str:
    """Prometheus text exposition: ``clinrisk_<metric>{model_version=...}`` and per-feature PSI gauges."""
    base = f'model_version="{_prom_label(model_version)}"' if model_version else ""
    lines: list[str] = []
    for key, value in headline(report).items():
        name = f"clinrisk_{key}"
        lines.append(f"# HELP {name} clinrisk drift job: {key.replace('_', ' ')}")
        lines.append(f"# TYPE {name} gauge")
        lines.append(f"{name}{{{base}}} {value:.6g}" if base else f"{name} {value:.6g}")
    lines.append("# HELP clinrisk_drift_feature_psi PSI of a feature vs the training reference")
    lines.append("# TYPE clinrisk_drift_feature_psi gauge")
    for e in report["features"]:
        if math.isfinite(e["psi"]):
            lab = f'feature="{_prom_label(e["feature"])}"' + (f",{base}" if base else "")
            lines.append(f"clinrisk_drift_feature_psi{{{lab}}} {e['psi']:.6g}")
    return "\n".join(lines) + "\n"


def render_markdown(report: dict[str, Any], top: int = 20) -> str:
    """Human-readable drift report."""
    s = report.get("score") or {}
    b = report["bounds"]
    lines = [
        "# Drift report",
        "",
        f"- Decision: **{report['decision']}**",
        *[f"  - {r}" for r in report["reasons"]],
        f"- Logged rows: {report['n_rows']}; features compared: {report['n_features_compared']}"
        + (
            f" ({len(report['features_absent_from_log'])} absent from the log)"
            if report["features_absent_from_log"]
            else ""
        ),
        f"- Features with PSI > {b['psi_feature_bound']}: {report['n_drifted_features']} "
        f"(retrain at >= {b['min_drifted_features']}); calendar-trend features over it, not counted: "
        f"{', '.join(report.get('drifted_calendar_trend_features') or []) or 'none'}",
        f"- Out of training range: worst feature {report.get('max_out_of_range_feature') or '–'} "
        f"{report.get('max_feature_out_of_range') or 0.0:.4f} (bound {b['out_of_range_bound']}); rows with "
        f"any non-trend feature out of range {report['out_of_range_rate']:.4f}",
    ]
    st = report.get("standardisation")
    if st:
        lines.append(
            f"- Standardised to the reference distribution of {', '.join(st.get('by') or []) or 'given weights'}"
            f": effective rows {st['effective_rows']:.0f}"
            + (
                f", unmatched reference share {st['unmatched_reference_share']:.4f}"
                if "unmatched_reference_share" in st
                else ""
            )
        )
    if s.get("available"):
        lines.append(
            f"- Score: PSI {s['psi']:.4f} (bound {b['psi_score_bound']}), KS at reference deciles "
            f"{s['ks']:.4f} (bound {b['ks_score_bound']}), mean {s['mean']:.4f} vs reference "
            f"{(s['reference_mean'] or float('nan')):.4f}"
        )
    else:
        lines.append("- Score: not available (no score column or no reference score bins)")
    lines += [
        "",
        f"## Top {top} features by PSI",
        "",
        "| feature | type | PSI | missing (ref → now) | out of range |",
        "|---|---|---|---|---|",
    ]
    for e in report["features"][:top]:
        oor = e.get("out_of_range_share")
        lines.append(
            f"| {e['feature']} | {e['type']} | {e['psi']:.4f}{' ⚠' if e['drifted'] else ''} | "
            f"{e['reference_missing_share']:.3f} → {e['missing_share']:.3f} | "
            f"{'' if oor is None else f'{oor:.4f}'}{' (calendar trend)' if e.get('calendar_trend') else ''} |"
        )
    return "\n".join(lines) + "\n"


def write_drift_outputs(report: dict[str, Any], out_dir: Path, model_version: str | None = None) -> Path:
    """Publish report.json, report.md and metrics.prom atomically into ``out_dir``."""

    with atomic_output_dir(Path(out_dir)) as tmp:
        write_json(tmp / "report.json", json_safe(report))
        (tmp / "report.md").write_text(render_markdown(report))
        (tmp / "metrics.prom").write_text(prometheus_text(report, model_version))
    return Path(out_dir)


def log_drift_to_mlflow(
    cfg: ClinriskConfig, report_dir: Path, report: dict[str, Any], run_dir: Path | None = None
) -> str:
    """Record the drift job as its own MLflow run (metrics + the report artifacts); returns the run id."""
    from clinrisk import tracking

    run_id = tracking.start_run(
        cfg,
        run_dir,
        tags={"clinrisk.job": "drift", "clinrisk.drift_decision": report["decision"]},
        run_name=f"drift-{cfg.run.name}",
    )
    tracking.log_metrics(headline(report), run_id)
    tracking.log_artifacts(Path(report_dir), "drift", run_id)
    tracking.end_run(run_id)
    return run_id


def run_drift_job(
    cfg: ClinriskConfig,
    bundle_dir: Path,
    log_dir: Path,
    out_dir: Path,
    *,
    model_version: str | None = None,
    since: datetime | None = None,
    mlflow: bool = False,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Read the request log (rows of ``model_version``, default the bundle's), compare with the bundle's
    reference, publish the report; returns the report (with ``mlflow_run_id`` when logged)."""
    from clinrisk.bundle import REFERENCE_FILE
    from clinrisk.io import read_json
    from clinrisk.request_log import read_request_log

    reference = read_json(Path(bundle_dir) / REFERENCE_FILE)
    version = model_version
    if version is None:
        meta = read_json(Path(bundle_dir) / "metadata.json")
        version = str(meta.get("bundle_version", "")) or None
    logged = read_request_log(log_dir, model_version=version, since=since)
    report = drift_report(reference, logged, cfg)
    report["bundle_dir"] = str(bundle_dir)
    report["model_version"] = version
    write_drift_outputs(report, out_dir, version)
    if mlflow:
        report["mlflow_run_id"] = log_drift_to_mlflow(cfg, Path(out_dir), report, run_dir)
    return report
