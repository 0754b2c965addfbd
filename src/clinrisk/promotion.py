"""Promotion gate: challenger vs champion on metrics that need no true labels, then MLflow aliases.

Rule (``PromotionConfig``): the challenger is promoted iff it improves the primary metric by more than
``min_primary_gain`` AND is not worse than the champion by more than the tolerance on any guard metric.
A tie on the primary keeps the champion. No champion yet → the challenger becomes champion (first
deployment). Guards missing on either side are skipped and listed (e.g. latency when not measured).

Metrics basis: when a features directory is given and both models can build their inputs from it, both
bundles are scored on the *same* validation rows against recorded labels (AP, AUC, Brier, log-loss,
net benefit at p_t, |log O/E|, worst slice AUC gap) and paired patient-bootstrap intervals of the
differences are reported. Otherwise the metrics stored in each bundle's ``metrics.json`` are compared
(different validation sets; said so in the record). Every decision — win or lose — is written as
``decision.json`` + ``decision.md`` and logged to MLflow (the challenger's run) with the numbers.
"""

from __future__ import annotations

import math
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from clinrisk.config import ClinriskConfig
from clinrisk.config.monitoring import GATE_METRICS, PromotionConfig
from clinrisk.errors import DataError
from clinrisk.io import json_safe, write_json

PROMOTE, KEEP = "promote", "keep_champion"


def promotion_config(cfg: ClinriskConfig) -> PromotionConfig:
    """The config's ``promotion`` section, or defaults while it is not mounted in ClinriskConfig."""
    pc = getattr(cfg, "promotion", None)
    return pc if isinstance(pc, PromotionConfig) else PromotionConfig()


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(float(x))


def improvement(metric: str, challenger: float, champion: float) -> float:
    """Signed change of challenger vs champion, positive = better."""
    sign = 1.0 if GATE_METRICS[metric] == "higher" else -1.0
    return sign * (float(challenger) - float(champion))


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    pc: PromotionConfig,
) -> dict[str, Any]:
    """Pure gate decision on two metric sets (keys of :data:`GATE_METRICS`)."""
    if champion is None:
        # Bootstrap: the first model passes when its primary metric was measured at all (a model whose
        # validation AP is missing or NaN never becomes champion by default).
        ok = _finite(challenger.get(pc.primary))
        return {
            "decision": PROMOTE if ok else KEEP,
            "first_deployment": True,
            "reason": "no champion registered: the challenger becomes champion (first deployment)"
            if ok
            else f"no champion registered, but the challenger's {pc.primary!r} is missing or not finite: "
            "no champion set",
            "primary": {"metric": pc.primary, "challenger": challenger.get(pc.primary)},
            "guards": [],
            "skipped": [],
        }
    prim = pc.primary
    if not (_finite(challenger.get(prim)) and _finite(champion.get(prim))):
        raise DataError(f"promotion.primary: metric {prim!r} missing or not finite for challenger/champion")
    gain = improvement(prim, challenger[prim], champion[prim])
    won = gain > pc.min_primary_gain
    guards: list[dict[str, Any]] = []
    skipped: list[str] = []
    for metric, tol in pc.guards.items():
        a, b = challenger.get(metric), champion.get(metric)
        if not (_finite(a) and _finite(b)):
            skipped.append(metric)
            continue
        assert a is not None and b is not None
        worse = -improvement(metric, a, b)
        guards.append(
            {
                "metric": metric,
                "direction": GATE_METRICS[metric],
                "challenger": float(a),
                "champion": float(b),
                "worsening": worse,
                "tolerance": tol,
                "passed": bool(worse <= tol + 1e-12),
            }
        )
    failed = [g for g in guards if not g["passed"]]
    reasons: list[str] = []
    if gain == 0:
        reasons.append(f"tie on {prim} ({challenger[prim]:.5f}): champion kept")
    elif not won:
        reasons.append(
            f"{prim} change {gain:+.5f} (positive = better) does not exceed {pc.min_primary_gain:g}"
        )
    for g in failed:
        reasons.append(
            f"guard {g['metric']}: challenger {g['challenger']:.5f} vs champion {g['champion']:.5f} "
            f"is worse by {g['worsening']:.5f} > tolerance {g['tolerance']:g}"
        )
    promote = won and not failed
    if promote:
        reasons.append(f"{prim} improves by {gain:+.5f} and every guard is within tolerance")
    return {
        "decision": PROMOTE if promote else KEEP,
        "first_deployment": False,
        "reason": "; ".join(reasons),
        "primary": {
            "metric": prim,
            "challenger": float(challenger[prim]),
            "champion": float(champion[prim]),
            "improvement": gain,
            "min_gain": pc.min_primary_gain,
            "won": won,
        },
        "guards": guards,
        "skipped": skipped,
    }


# ---------------------------------------------------------------------------------------- metric sets


def metrics_from_section(section: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, float]:
    """Gate metrics from a bundle ``metrics.json`` section (``validation``-style dict of floats)."""
    out: dict[str, float] = {}
    for k in ("ap", "auc", "brier", "log_loss", "net_benefit", "slice_auc_gap", "latency_p95_ms"):
        if _finite(section.get(k)):
            out[k] = float(section[k])
    oe = section.get("oe")
    if _finite(oe) and float(section["oe"]) > 0:
        out["calibration_error"] = abs(math.log(float(section["oe"])))
    for k, v in (extra or {}).items():
        if _finite(v):
            out[k] = float(v)
    return out


def stored_metrics(bundle: Any, pc: PromotionConfig) -> dict[str, float]:
    """Gate metrics recorded in a bundle (``metrics_section``; net benefit at the bundle's threshold)."""
    section = bundle.metrics.get(pc.metrics_section)
    if not isinstance(section, dict):
        raise DataError(
            f"bundle {bundle.path}: metrics.json has no section {pc.metrics_section!r} "
            f"(promotion.metrics_section)"
        )
    extra: dict[str, Any] = {}
    nb = bundle.metrics.get("net_benefit_at_threshold")
    if "net_benefit" not in section and _finite(nb):
        extra["net_benefit"] = nb
    return metrics_from_section(section, extra)


def load_validation_frame(
    features_dir: Path, columns: list[str], optional: list[str] | None = None, split: str = "validation"
) -> pl.DataFrame:
    """``split`` rows of the features dataset: ids, recorded label, ``columns`` (required) and the
    ``optional`` columns that exist."""
    from clinrisk.io import list_shards

    shards = list_shards(Path(features_dir))
    lf = pl.scan_parquet([str(s) for s in shards])
    names = lf.collect_schema().names()
    need = ["patient_id", "year", "split", "label_rec", *columns]
    missing = [c for c in need if c not in names]
    if missing:
        raise DataError(f"{features_dir}: features dataset lacks column(s) {missing}")
    need += [c for c in optional or [] if c in names]
    df = lf.select(list(dict.fromkeys(need))).filter(pl.col("split").cast(pl.String) == split).collect()
    if df.height == 0:
        raise DataError(f"{features_dir}: no rows with split == {split!r}")
    return df


def frame_metrics(
    y: np.ndarray,
    p: np.ndarray,
    p_t: float,
    slices: dict[str, np.ndarray] | None = None,
    min_slice_rows: int = 200,
) -> dict[str, float]:
    """Gate metrics of scores ``p`` against labels ``y`` (recorded labels in production)."""
    from clinrisk import metrics as M

    out = {
        "ap": M.average_precision(y, p),
        "auc": M.roc_auc(y, p),
        "brier": M.brier(y, p),
        "log_loss": M.log_loss(y, p),
        "net_benefit": M.net_benefit(y, p, p_t),
    }
    oe = float(y.sum() / p.sum()) if p.sum() > 0 else float("nan")
    out["calibration_error"] = abs(math.log(oe)) if oe > 0 else float("nan")
    gaps: list[float] = []
    for values in (slices or {}).values():
        for level in np.unique(values):
            m = values == level
            if m.sum() < min_slice_rows or not 0 < y[m].sum() < m.sum():
                continue
            gaps.append(out["auc"] - M.roc_auc(y[m], p[m]))
    if gaps:
        out["slice_auc_gap"] = float(max(gaps))
    return out


def rescored_comparison(
    challenger: Any,
    champion: Any,
    features_dir: Path,
    p_t: float,
    pc: PromotionConfig,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Score both bundles on the same validation rows; metrics + paired bootstrap of differences."""
    from clinrisk import metrics as M
    from clinrisk.config import EvaluateConfig
    from clinrisk.evaluate import slice_values

    needed = list(dict.fromkeys([*challenger.feature_names, *champion.feature_names]))
    df = load_validation_frame(features_dir, needed, optional=list(pc.slice_columns))
    y = df["label_rec"].cast(pl.Float64).to_numpy()
    p_new = np.asarray(challenger.predict_proba(df), dtype=np.float64)
    p_old = np.asarray(champion.predict_proba(df), dtype=np.float64)
    cats = dict(challenger.spec.get("categories") or {})
    ecfg = EvaluateConfig()
    slices: dict[str, np.ndarray] = {}
    for col in pc.slice_columns:
        if col in df.columns:
            v = slice_values(df, col, ecfg, cats)
            if v is not None:
                slices[col] = v
    new = frame_metrics(y, p_new, p_t, slices, pc.min_slice_rows)
    old = frame_metrics(y, p_old, p_t, slices, pc.min_slice_rows)
    diff = M.paired_bootstrap_diff(
        y, p_old, p_new, df["patient_id"].to_numpy(), tau=p_t, p_t=p_t, n_boot=n_boot, seed=seed
    )
    keep = ("ap", "auc", "brier", "log_loss", "net_benefit", "oe")
    return {
        "basis": f"both models scored on the validation split of {features_dir} (recorded labels, "
        f"{df.height} rows)",
        "challenger": new,
        "champion": old,
        "paired_bootstrap_challenger_minus_champion": {k: diff[k] for k in keep if k in diff},
        "n_rows": df.height,
    }


# ------------------------------------------------------------------------------------------- registry


def _version_or_none(client: Any, name: str, alias: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def render_markdown(record: dict[str, Any]) -> str:
    """Human-readable record of one gate decision."""
    d = record["gate"]
    lines = [
        f"# Promotion gate: {d['decision']}",
        "",
        f"- Time (UTC): {record['created_utc']}",
        f"- Model: `{record['registered_model']}`; challenger v{record['challenger_version']}, champion "
        f"{'v' + str(record['champion_version']) if record['champion_version'] else 'none'}",
        f"- Basis: {record.get('basis', '')}",
        f"- Rule: {record['rule']}",
        f"- Reason: {d['reason']}",
        f"- Alias `champion` now: v{record['champion_after']}" if record.get("champion_after") else "",
        "",
    ]
    if d["primary"].get("champion") is not None:
        pr = d["primary"]
        lines += [
            "| metric | role | challenger | champion | change (+ = better) | tolerance | ok |",
            "|---|---|---|---|---|---|---|",
            f"| {pr['metric']} | primary | {pr['challenger']:.5f} | {pr['champion']:.5f} | "
            f"{pr['improvement']:+.5f} | > {pr['min_gain']:g} | {'yes' if pr['won'] else 'no'} |",
        ]
        for g in d["guards"]:
            lines.append(
                f"| {g['metric']} | guard | {g['challenger']:.5f} | {g['champion']:.5f} | "
                f"{-g['worsening']:+.5f} | {g['tolerance']:g} | {'yes' if g['passed'] else 'NO'} |"
            )
        if d["skipped"]:
            lines += ["", f"Guards skipped (not measured on both sides): {', '.join(d['skipped'])}"]
    boot = record.get("paired_bootstrap_challenger_minus_champion")
    if boot:
        lines += [
            "",
            "Paired patient-bootstrap of challenger − champion (same validation rows):",
            "",
            "| metric | diff | 95% CI |",
            "|---|---|---|",
        ]
        for k, v in boot.items():
            lines.append(f"| {k} | {v['diff']:+.5f} | [{v['lo']:+.5f}, {v['hi']:+.5f}] |")
    return "\n".join(x for x in lines if x is not None) + "\n"


def run_promotion(
    cfg: ClinriskConfig,
    *,
    features_dir: Path | None = None,
    out_dir: Path | None = None,
    run_dir: Path | None = None,
    latency_ms: dict[str, float] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Gate the ``challenger`` alias against ``champion``; on a win move ``champion``. Always records.

    ``latency_ms`` = ``{"challenger": p95, "champion": p95}`` when serving latency was measured.
    """
    from clinrisk import tracking

    pc = promotion_config(cfg)
    tracking.configure(cfg, run_dir)
    client = tracking.mlflow_client()
    name = cfg.tracking.registered_model_name
    chal = _version_or_none(client, name, tracking.CHALLENGER)
    if chal is None:
        raise DataError(f"registered model {name!r}: no version has the alias '{tracking.CHALLENGER}'")
    champ = _version_or_none(client, name, tracking.CHAMPION)
    record: dict[str, Any] = {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "registered_model": name,
        "challenger_version": str(chal.version),
        "champion_version": str(champ.version) if champ is not None else None,
        "rule": (
            f"promote iff {pc.primary} improves by > {pc.min_primary_gain:g} and no guard worsens beyond "
            f"its tolerance {pc.guards}; tie keeps champion; no champion → promote"
        ),
        "dry_run": dry_run,
    }
    with tempfile.TemporaryDirectory(prefix="clinrisk-gate-") as tmp:
        from clinrisk.bundle import load_bundle

        chal_bundle = load_bundle(tracking.resolve_model(cfg, str(chal.version), Path(tmp) / "chal", run_dir))
        # p_t: the gate's explicit setting, else the one frozen in the challenger's bundle (never the config's
        # threshold section, which may have changed since the model was trained).
        p_t = pc.p_t or chal_bundle.threshold_probability
        record["p_t"] = p_t
        if champ is None:
            chal_m = stored_metrics(chal_bundle, pc)
            gate = decide(chal_m, None, pc)
            record["basis"] = "first deployment (no champion to compare)"
            record["challenger_metrics"] = chal_m
        elif str(champ.version) == str(chal.version):
            gate = {
                "decision": KEEP,
                "first_deployment": False,
                "reason": f"challenger v{chal.version} is already champion: nothing to do",
                "primary": {"metric": pc.primary},
                "guards": [],
                "skipped": [],
            }
            record["basis"] = "no comparison needed"
        else:
            champ_bundle = load_bundle(
                tracking.resolve_model(cfg, str(champ.version), Path(tmp) / "champ", run_dir)
            )
            comp: dict[str, Any] | None = None
            if features_dir is not None:
                try:
                    comp = rescored_comparison(
                        chal_bundle, champ_bundle, Path(features_dir), p_t, pc, seed=cfg.run.seed
                    )
                except DataError as exc:
                    record["rescoring_skipped"] = str(exc)
            if comp is not None:
                chal_m, champ_m = comp["challenger"], comp["champion"]
                record["basis"] = comp["basis"]
                record["paired_bootstrap_challenger_minus_champion"] = comp[
                    "paired_bootstrap_challenger_minus_champion"
                ]
            else:
                chal_m, champ_m = stored_metrics(chal_bundle, pc), stored_metrics(champ_bundle, pc)
                record["basis"] = (
                    f"metrics stored in each bundle's metrics.json section {pc.metrics_section!r} "
                    "(each model's own validation rows)"
                )
            if latency_ms:
                for side, m in (("challenger", chal_m), ("champion", champ_m)):
                    if _finite(latency_ms.get(side)):
                        m["latency_p95_ms"] = float(latency_ms[side])
            record["challenger_metrics"], record["champion_metrics"] = chal_m, champ_m
            gate = decide(chal_m, champ_m, pc)
    record["gate"] = gate
    if gate["decision"] == PROMOTE and not dry_run:
        tracking.set_alias(cfg, tracking.CHAMPION, str(chal.version), run_dir)
        client.set_model_version_tag(name, str(chal.version), "promoted_utc", record["created_utc"])
        record["champion_after"] = str(chal.version)
    else:
        record["champion_after"] = record["champion_version"]
    record["champion_uri"] = (
        tracking.model_uri(cfg, record["champion_after"]) if record["champion_after"] else None
    )
    client.set_model_version_tag(name, str(chal.version), "gate_decision", gate["decision"])
    # Record: local files + MLflow artifacts/metrics on the challenger's run.
    stamp = record["created_utc"].replace(":", "").replace("-", "")
    from clinrisk.paths import RunPaths

    dest = (
        Path(out_dir)
        if out_dir is not None
        else (Path(run_dir) if run_dir is not None else RunPaths.for_config(cfg).root)
        / "promotion"
        / f"{stamp}-v{chal.version}"
    )
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "decision.json", json_safe(record))
    (dest / "decision.md").write_text(render_markdown(record))
    record["record_dir"] = str(dest)
    if chal.run_id:
        flat = {f"gate.challenger.{k}": v for k, v in (record.get("challenger_metrics") or {}).items()}
        flat.update({f"gate.champion.{k}": v for k, v in (record.get("champion_metrics") or {}).items()})
        flat["gate.promoted"] = 1.0 if gate["decision"] == PROMOTE and not dry_run else 0.0
        tracking.log_metrics(flat, chal.run_id)
        tracking.log_artifacts(dest, f"promotion/{dest.name}", chal.run_id)
        record["mlflow_run_id"] = chal.run_id
    return record


def bootstrap_champion(cfg: ClinriskConfig, run_dir: Path | None = None) -> dict[str, Any] | None:
    """Bootstrap policy: with no ``champion`` yet, gate the ``challenger`` (the first-deployment rule of
    :func:`decide`), so the first model that passes becomes champion and ``clinrisk drift`` works after the
    first pipeline run. Returns the gate record, or None when a champion already exists."""
    from clinrisk import tracking

    tracking.configure(cfg, run_dir)
    client = tracking.mlflow_client()
    if _version_or_none(client, cfg.tracking.registered_model_name, tracking.CHAMPION) is not None:
        return None
    return run_promotion(cfg, run_dir=run_dir)


# ------------------------------------------------------------------------------------- canary A/B


def _two_sample_ks(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / a.size
    fb = np.searchsorted(np.sort(b), grid, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def canary_ab(
    log: pl.DataFrame,
    champion_version: str,
    canary_version: str,
    outcomes: pl.DataFrame | None = None,
    *,
    n_boot: int = 200,
    seed: int = 0,
    ci_level: float = 0.95,
) -> dict[str, Any]:
    """Champion vs canary from the request log: score distributions (PSI over the champion's deciles,
    two-sample KS, means) and, when ``outcomes`` (``request_id``, ``label``) are known, AP and Brier per
    arm with bootstrap CIs and the canary − champion difference (arms are independent request sets, so
    each is resampled on its own)."""
    from clinrisk import metrics as M
    from clinrisk.drift import numeric_bin_shares, psi
    from clinrisk.request_log import MODEL_VERSION, PROBABILITY, REQUEST_ID

    arms = {"champion": champion_version, "canary": canary_version}
    frames = {k: log.filter(pl.col(MODEL_VERSION) == v) for k, v in arms.items()}
    for k, f in frames.items():
        if f.height == 0:
            raise DataError(f"request log: no rows for the {k} model version {arms[k]!r}")
    s = {k: f[PROBABILITY].cast(pl.Float64).to_numpy() for k, f in frames.items()}
    edges = np.unique(np.quantile(s["champion"], np.linspace(0.1, 0.9, 9)))
    out: dict[str, Any] = {
        "versions": arms,
        "n_requests": {k: int(v.size) for k, v in s.items()},
        "traffic_share_canary": s["canary"].size / (s["canary"].size + s["champion"].size),
        "score": {
            "mean": {k: float(v.mean()) for k, v in s.items()},
            "quantiles": {k: np.quantile(v, [0.1, 0.5, 0.9]).tolist() for k, v in s.items()},
            "psi_canary_vs_champion": psi(
                numeric_bin_shares(s["champion"], edges)[:-1], numeric_bin_shares(s["canary"], edges)[:-1]
            ),
            "ks": _two_sample_ks(s["champion"], s["canary"]),
        },
    }
    if outcomes is None:
        return out
    if REQUEST_ID not in log.columns:
        raise DataError("request log: no request_id column, so outcomes cannot be joined")
    for c in (REQUEST_ID, "label"):
        if c not in outcomes.columns:
            raise DataError(f"outcomes: missing column {c!r} (need request_id, label)")
    alpha = 1 - ci_level
    rng = np.random.default_rng(seed)
    reps: dict[str, dict[str, np.ndarray]] = {}
    perf: dict[str, Any] = {}
    for k, f in frames.items():
        j = f.join(outcomes.select(REQUEST_ID, "label"), on=REQUEST_ID, how="inner")
        y = j["label"].cast(pl.Float64).to_numpy()
        p = j[PROBABILITY].cast(pl.Float64).to_numpy()
        if y.size == 0 or not 0 < y.sum() < y.size:
            raise DataError(f"outcomes: the {k} arm has {y.size} labelled requests without both classes")
        idx = rng.integers(0, y.size, size=(n_boot, y.size))
        ap = np.array([M.average_precision(y[i], p[i]) if 0 < y[i].sum() < y.size else np.nan for i in idx])
        br = ((p[idx] - y[idx]) ** 2).mean(axis=1)
        reps[k] = {"ap": ap, "brier": br}
        perf[k] = {"n_labelled": int(y.size), "prevalence": float(y.mean())}
        for m, r in reps[k].items():
            point = M.average_precision(y, p) if m == "ap" else M.brier(y, p)
            lo, hi = np.nanquantile(r, [alpha / 2, 1 - alpha / 2])
            perf[k][m] = {"value": point, "lo": float(lo), "hi": float(hi)}
    diff = {}
    for m in ("ap", "brier"):
        d = reps["canary"][m] - reps["champion"][m]
        lo, hi = np.nanquantile(d, [alpha / 2, 1 - alpha / 2])
        diff[m] = {
            "diff": perf["canary"][m]["value"] - perf["champion"][m]["value"],
            "lo": float(lo),
            "hi": float(hi),
        }
    out["performance"] = perf
    out["canary_minus_champion"] = diff
    return out
