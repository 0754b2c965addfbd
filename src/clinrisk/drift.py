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
from clinrisk.io import atomic_output_dir, write_json
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


def numeric_bin_shares(values: Any, edges: Any) -> FloatArray:
    """Shares over bins ``(-inf, e1), [e1, e2), ..., [ek, inf)`` plus a final *missing* bin (NaN)."""
    x = np.asarray(values, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    ok = np.isfinite(x)
    counts = np.bincount(np.searchsorted(e, x[ok], side="right"), minlength=e.size + 1).astype(np.float64)
    out = np.append(counts, float((~ok).sum()))
    return out / max(x.size, 1)


def reference_numeric_shares(ref: dict[str, Any]) -> FloatArray:
    """The reference's bin shares (over finite values) rescaled to include its missing share as a bin."""
    shares = np.asarray(ref.get("shares") or [], dtype=np.float64)
    miss = float(ref.get("missing_share") or 0.0)
    return np.append(shares * (1.0 - miss), miss)


def categorical_shares(values: pl.Series, levels: list[str]) -> FloatArray:
    """Shares over ``levels`` (+ missing bin). Strings map by name (unknown → ``__OTHER__``); integer
    codes are taken as indices into ``levels``."""
    n = len(values)
    k = len(levels)
    if values.dtype.is_integer() or values.dtype.is_float():
        codes = values.cast(pl.Float64).to_numpy()
        ok = np.isfinite(codes) & (codes >= 0) & (codes < k)
        idx = codes[ok].astype(np.int64)
        missing = float((~np.isfinite(codes)).sum())
        unknown = float((np.isfinite(codes) & ~ok).sum())
    else:
        s = values.cast(pl.String)
        lut = {lv: i for i, lv in enumerate(levels)}
        other = lut.get(OTHER_LEVEL)
        arr = s.to_list()
        idx_l: list[int] = []
        missing = unknown = 0.0
        for v in arr:
            if v is None:
                missing += 1
            elif v in lut:
                idx_l.append(lut[v])
            elif other is not None:
                idx_l.append(other)
            else:
                unknown += 1
        idx = np.asarray(idx_l, dtype=np.int64)
    counts = np.bincount(idx, minlength=k).astype(np.float64)[:k]
    if unknown and OTHER_LEVEL in levels:
        counts[levels.index(OTHER_LEVEL)] += unknown
    return np.append(counts, missing) / max(n, 1)


def ks_at_edges(ref_shares: Any, cur_values: Any, edges: Any) -> float:
    """max |F_ref − F_cur| at the reference bin edges (finite values only)."""
    r = np.asarray(ref_shares, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    x = np.asarray(cur_values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0 or e.size == 0:
        return float("nan")
    f_ref = np.cumsum(r / r.sum())[:-1]  # CDF just below each edge e_k: share of bins left of it
    f_cur = np.searchsorted(np.sort(x), e, side="left") / x.size
    return float(np.max(np.abs(f_ref - f_cur)))


# ----------------------------------------------------------------------------------------------- report


def _bounds(cfg: ClinriskConfig | MonitoringConfig) -> MonitoringConfig:
    return cfg.monitoring if isinstance(cfg, ClinriskConfig) else cfg


def is_calendar_trend(name: str, patterns: list[str]) -> bool:
    """Whether ``name`` matches one of the (case-sensitive fnmatch) calendar-trend patterns."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def drift_report(
    reference: dict[str, Any],
    logged: pl.DataFrame,
    cfg: ClinriskConfig | MonitoringConfig,
    *,
    score_column: str = PROBABILITY,
) -> dict[str, Any]:
    """Compare logged rows (feature columns + ``score_column``) with a bundle's ``reference_stats.json``.

    Features absent from the log are listed, not guessed. Returns a JSON-able report with ``decision``
    in {"retrain", "ok", "insufficient_data"} and the reasons.
    """
    mc = _bounds(cfg)
    feats_ref: dict[str, Any] = reference.get("features") or {}
    if not feats_ref:
        raise DataError("reference_stats: no 'features' entry")
    n = logged.height
    rows: list[dict[str, Any]] = []
    absent: list[str] = []
    oor_any = np.zeros(n, dtype=bool)
    for name, ref in feats_ref.items():
        if name not in logged.columns:
            absent.append(name)
            continue
        col = logged[name]
        trend = is_calendar_trend(name, mc.calendar_trend_features)
        entry: dict[str, Any] = {"feature": name, "type": ref.get("type", "numeric"), "calendar_trend": trend}
        if ref.get("type") == "categorical":
            levels = [str(x) for x in ref["levels"]]
            r = np.append(
                np.asarray(ref["shares"], dtype=np.float64) * (1 - ref["missing_share"]), ref["missing_share"]
            )
            c = categorical_shares(col, levels)
            entry["missing_share"] = float(c[-1])
        else:
            x = col.cast(pl.Float64).fill_null(float("nan")).to_numpy()
            if ref.get("edges"):
                r = reference_numeric_shares(ref)
                c = numeric_bin_shares(x, ref["edges"])
            else:  # constant or all-missing in training: present-vs-missing only
                miss = float(ref.get("missing_share") or 0.0)
                r = np.array([1 - miss, miss])
                c = np.array([np.isfinite(x).mean() if n else 0.0, 1 - np.isfinite(x).mean() if n else 0.0])
            lo, hi = ref.get("min"), ref.get("max")
            ok = np.isfinite(x)
            out = np.zeros(n, dtype=bool)
            if lo is not None and hi is not None:
                out = ok & ((x < lo) | (x > hi))
            if not trend:
                oor_any |= out
            entry["out_of_range_share"] = float(out.mean()) if n else 0.0
            entry["missing_share"] = float((~ok).mean()) if n else 0.0
            entry["mean"] = float(np.nanmean(x)) if ok.any() else None
            entry["reference_mean"] = ref.get("mean")
        entry["reference_missing_share"] = float(ref.get("missing_share") or 0.0)
        entry["psi"] = psi(r, c, mc.psi_floor) if n else float("nan")
        entry["drifted"] = bool(n and entry["psi"] > mc.psi_feature_bound)
        rows.append(entry)
    rows.sort(key=lambda e: -(e["psi"] if math.isfinite(e["psi"]) else -1))

    score: dict[str, Any] = {"available": False}
    sref = reference.get("score") or {}
    if score_column in logged.columns and n:
        s = logged[score_column].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        edges = sref.get("edges") or []
        if edges:
            r = np.asarray(sref["shares"], dtype=np.float64)
            c = numeric_bin_shares(s, edges)[:-1]
            c = c / max(c.sum(), 1e-12)
            score = {
                "available": True,
                "psi": psi(r, c, mc.psi_floor),
                "ks": ks_at_edges(r, s, edges),
                "mean": float(np.nanmean(s)),
                "reference_mean": sref.get("mean"),
                "n_bins": len(edges) + 1,
            }

    drifted = [e["feature"] for e in rows if e["drifted"] and not e["calendar_trend"]]
    drifted_trend = [e["feature"] for e in rows if e["drifted"] and e["calendar_trend"]]
    oor_rate = float(oor_any.mean()) if n else 0.0
    oor_feats = [e for e in rows if "out_of_range_share" in e and not e["calendar_trend"]]
    worst = max(oor_feats, key=lambda e: e["out_of_range_share"], default=None)
    max_oor = float(worst["out_of_range_share"]) if worst is not None else 0.0
    reasons: list[str] = []
    if n < mc.min_rows:
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
    finite = [e["psi"] for e in rows if math.isfinite(e["psi"])]
    return {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_rows": n,
        "n_features_compared": len(rows),
        "features_absent_from_log": absent,
        "features": rows,
        "max_feature_psi": max(finite) if finite else None,
        "n_drifted_features": len(drifted),
        "drifted_features": drifted,
        "score": score,
        "drifted_calendar_trend_features": drifted_trend,
        "out_of_range_rate": oor_rate,
        "max_feature_out_of_range": max_oor,
        "max_out_of_range_feature": worst["feature"] if worst is not None else None,
        "calendar_trend_features": [e["feature"] for e in rows if e["calendar_trend"]],
        "bounds": mc.model_dump(mode="json"),
        "decision": decision,
        "reasons": reasons,
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
    from clinrisk.evaluate import _json_safe

    with atomic_output_dir(Path(out_dir)) as tmp:
        write_json(tmp / "report.json", _json_safe(report))
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
