"""Comparing the runs of a use case with its own experiment hooks (:class:`clinrisk.usecases.base.ExperimentHooks`):
per-unit scores (e.g. Dice per validation image) paired on the unit, deltas vs the baseline with a paired
bootstrap that resamples the units' groups (patients), the ``best_with_ci`` winner rule, Markdown + JSON.

The run metric is the mean per-unit score. One bootstrap replicate draws the groups with replacement (the same
draw for both runs, so shared per-patient difficulty cancels) and takes the mean of the per-unit differences
over the drawn units; the CI is the replicates' percentile interval at the report's level.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from clinrisk.errors import ConfigError, DataError
from clinrisk.experiments.suite import SuiteSpec, baseline_pairs

if TYPE_CHECKING:
    from clinrisk.usecases.base import ExperimentHooks


def experiment_hooks(usecase: str | None) -> ExperimentHooks | None:
    """The use case's experiment hooks; None for the tabular path (no hooks, or no use case named)."""
    if not usecase:
        return None
    from clinrisk.usecases import get

    return get(usecase).experiments


def check_rule(suite: SuiteSpec, usecase: str, hooks: ExperimentHooks) -> None:
    """The suite's winner rule must be one this path applies, on one of the use case's metrics."""
    rule = suite.winner
    if rule.rule != "best_with_ci":
        raise ConfigError(
            f"suite {suite.name}: winner.rule {rule.rule}: use case {usecase} supports best_with_ci"
        )
    if rule.metric not in hooks.metrics:
        raise ConfigError(
            f"suite {suite.name}: winner.metric {rule.metric!r} is not a metric of use case {usecase} "
            f"(known: {', '.join(hooks.metrics)})"
        )


def paired_mean_diff(
    a: np.ndarray, b: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int, alpha: float
) -> dict[str, float]:
    """Mean of ``b - a`` per unit with a group-resampled bootstrap: diff, lo, hi, se, p_value (two-sided)."""
    from clinrisk.metrics import cluster_counts, patient_codes

    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    codes, n_groups = patient_codes(groups)
    sums = np.bincount(codes, weights=diff, minlength=n_groups)
    sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)
    counts = cluster_counts(n_groups, n_boot, seed).astype(np.float64)
    reps = (counts @ sums) / (counts @ sizes)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    side = min(float(np.mean(reps <= 0)), float(np.mean(reps >= 0)))
    return {
        "diff": float(diff.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "se": float(reps.std(ddof=1)) if reps.size > 1 else 0.0,
        "p_value": min(1.0, 2.0 * side),
    }


def _verdict(direction: str, d: dict[str, float]) -> str:
    better = d["lo"] > 0 if direction == "higher" else d["hi"] < 0
    worse = d["hi"] < 0 if direction == "higher" else d["lo"] > 0
    return "better" if better else ("worse" if worse else "no clear change")


def _scores(hooks: ExperimentHooks, entry: dict[str, Any]) -> pl.DataFrame:
    df = hooks.scores(entry)
    need = [hooks.unit, hooks.group, *hooks.metrics]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"run {entry.get('name')}: per-unit scores lack column(s) {missing}")
    if df.height == 0:
        raise DataError(f"run {entry.get('name')}: no per-unit scores")
    if df[hooks.unit].n_unique() != df.height:
        raise DataError(f"run {entry.get('name')}: a {hooks.unit} is scored twice")
    return df.select(need).sort(hooks.unit)


def _pair(
    hooks: ExperimentHooks, base: pl.DataFrame, run: pl.DataFrame, names: tuple[str, str]
) -> pl.DataFrame:
    """The two runs joined on the unit; they must have scored exactly the same units of the same groups."""
    u, g = hooks.unit, hooks.group
    j = base.join(run, on=u, how="full", suffix="_run", coalesce=True)
    unpaired = j.filter(pl.col(g).is_null() | pl.col(f"{g}_run").is_null()).height
    if unpaired:
        raise DataError(
            f"runs {names[1]} and {names[0]} were not scored on the same {hooks.unit_label} "
            f"({base.height} vs {run.height}, {unpaired} without a pair): no paired comparison"
        )
    if not (j[g] == j[f"{g}_run"]).all():
        raise DataError(f"runs {names[1]} and {names[0]}: a {u} belongs to a different {g} in each run")
    return j.sort(u)


def compare_unit_runs(
    res: dict[str, Any],
    hooks: ExperimentHooks,
    out_dir: Path | None,
    *,
    n_boot: int,
    seed: int,
    ci_level: float,
) -> dict[str, Any]:
    """The comparison report of a suite result whose use case has experiment hooks (see the module doc)."""
    from clinrisk.experiments.render import publish_comparison

    suite = SuiteSpec.model_validate(res["suite"])
    usecase = str(res["usecase"])
    check_rule(suite, usecase, hooks)
    alpha = 1.0 - ci_level
    frames: dict[str, pl.DataFrame] = {}
    rows: list[dict[str, Any]] = []
    for e in res["runs"]:
        row: dict[str, Any] = {
            k: e.get(k)
            for k in (
                "name", "arm", "cell", "order", "baseline", "is_baseline", "key_change", "status",
                "mlflow_run_id", "tracking_uri", "model_uri", "pipeline_dir", "wall_s", "summary", "error",
            )
        }  # fmt: skip
        row["mlflow_run_uri"] = f"runs:/{e['mlflow_run_id']}" if e.get("mlflow_run_id") else None
        if e.get("status") == "ok":
            frames[e["name"]] = _scores(hooks, e)
            f = frames[e["name"]]
            row["metrics"] = {m: float(f[m].cast(pl.Float64).mean()) for m in hooks.metrics}  # type: ignore[arg-type]
            row["n_units"] = f.height
            row["n_groups"] = f[hooks.group].n_unique()
        rows.append(row)
    for r, b in baseline_pairs(rows):
        j = _pair(hooks, frames[b["name"]], frames[r["name"]], (b["name"], r["name"]))
        groups = j[hooks.group].to_numpy()
        r["delta"] = {}
        for m, direction in hooks.metrics.items():
            d = paired_mean_diff(
                j[m].to_numpy(), j[f"{m}_run"].to_numpy(), groups, n_boot=n_boot, seed=seed, alpha=alpha
            )
            r["delta"][m] = {**d, "verdict": _verdict(direction, d)}
    report = {
        "suite": suite.name,
        "description": suite.description,
        "usecase": usecase,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "unit": hooks.unit,
        "group": hooks.group,
        "unit_label": hooks.unit_label,
        "metrics": dict(hooks.metrics),
        "bootstrap_replicates": n_boot,
        "bootstrap_seed": seed,
        "ci_level": ci_level,
        "winner_rule": {**suite.winner.model_dump(), "statement": _statement(suite, hooks)},
        "winners": _winners(rows, suite, hooks),
        "tracking_uri": res.get("tracking_uri"),
        "experiment": res.get("experiment"),
        "runs": rows,
    }
    dest = Path(out_dir) if out_dir is not None else Path(res.get("suite_dir") or ".")
    return publish_comparison(report, dest, render_unit_comparison(report), suite.name)


def _statement(suite: SuiteSpec, hooks: ExperimentHooks) -> str:
    m = suite.winner.metric
    best = "highest" if hooks.metrics[m] == "higher" else "lowest"
    return (
        f"within each cell, the arm with the {best} mean per-unit {m} on the {hooks.unit_label} among arms "
        f"whose paired {hooks.group}-bootstrap CI of the difference vs the baseline excludes 0 in the "
        "improving direction; if none, the baseline"
    )


def _winners(rows: list[dict[str, Any]], suite: SuiteSpec, hooks: ExperimentHooks) -> list[dict[str, Any]]:
    m = suite.winner.metric
    sign = 1.0 if hooks.metrics[m] == "higher" else -1.0
    cells: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault(r.get("cell"), []).append(r)
    out = []
    for cell, rs in cells.items():
        base = next((r for r in rs if r["is_baseline"]), None)
        cands = [
            r
            for r in rs
            if not r["is_baseline"]
            and r.get("status") == "ok"
            and ((r.get("delta") or {}).get(m) or {}).get("verdict") == "better"
        ]
        if not cands:
            out.append(
                {
                    "cell": cell,
                    "winner": base["name"] if base else None,
                    "reason": f"no arm's paired CI of Δ{m} excludes 0 in the improving direction: baseline kept",
                }
            )
            continue
        best = max(cands, key=lambda r: sign * r["metrics"][m])
        d = best["delta"][m]
        out.append(
            {
                "cell": cell,
                "winner": best["name"],
                "reason": f"{best['name']}: mean {m} {best['metrics'][m]:.4f}, paired Δ vs baseline "
                f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]",
            }
        )
    return out


def _fmt(x: Any, spec: str = ".4f") -> str:
    return format(x, spec) if isinstance(x, int | float) and math.isfinite(float(x)) else "–"


def render_unit_comparison(report: dict[str, Any]) -> str:
    """Markdown: per-run means, paired deltas with CIs and verdicts, the winner, MLflow links."""
    metrics = list(report["metrics"])
    rows = report["runs"]
    first: dict[str, Any] = next((r for r in rows if r.get("n_units")), {})
    lines = [
        f"# Experiment suite `{report['suite']}` (use case `{report['usecase']}`)",
        "",
        report.get("description") or "",
        "",
        f"Scores: mean per-unit {', '.join(metrics)} over {first.get('n_units', '–')} {report['unit_label']} "
        f"of {first.get('n_groups', '–')} {report['group']} groups. Deltas are run − baseline on the same "
        f"{report['unit']}s, with {report['ci_level']:.0%} percentile intervals from a paired bootstrap of "
        f"B = {report['bootstrap_replicates']} replicates resampling {report['group']} (seed "
        f"{report['bootstrap_seed']}).",
        "",
        "| run | key change | "
        + " | ".join(metrics)
        + " | "
        + " | ".join(f"Δ {m} [CI] verdict" for m in metrics)
        + " | wall s | status |",
        "|---|---|" + "---|" * (2 * len(metrics)) + "---|---|",
    ]
    for r in rows:
        m = r.get("metrics") or {}
        d = r.get("delta") or {}
        if "error" in d:
            deltas = [str(d["error"])] + [""] * (len(metrics) - 1)
        else:
            deltas = [
                f"{_fmt(d[k]['diff'], '+.4f')} [{_fmt(d[k]['lo'], '+.4f')}, {_fmt(d[k]['hi'], '+.4f')}] "
                f"{d[k]['verdict']}"
                if k in d
                else "–"
                for k in metrics
            ]
        lines.append(
            f"| {r['name']}{' (baseline)' if r['is_baseline'] else ''} | {r.get('key_change') or ''} | "
            + " | ".join(_fmt(m.get(k)) for k in metrics)
            + " | "
            + " | ".join(deltas)
            + f" | {_fmt(r.get('wall_s'), '.0f')} | {r.get('status')} |"
        )
    summaries = [r for r in rows if r.get("summary")]
    if summaries:
        keys = list(dict.fromkeys(k for r in summaries for k in r["summary"]))
        lines += ["", "## Run details (reported by the use case)", "", "| run | " + " | ".join(keys) + " |"]
        lines.append("|---|" + "---|" * len(keys))
        for r in summaries:
            cells = [r["summary"].get(k) for k in keys]
            lines.append(
                f"| {r['name']} | "
                + " | ".join(
                    _fmt(c) if isinstance(c, float) else ("–" if c is None else str(c)) for c in cells
                )
                + " |"
            )
    lines += ["", "## Winner", "", f"Rule: {report['winner_rule']['statement']}.", ""]
    for w in report["winners"]:
        cell = f" (cell `{w['cell']}`)" if w.get("cell") else ""
        lines.append(f"- **{w['winner']}**{cell}: {w['reason']}")
    lines += ["", "## Links", ""]
    if report.get("tracking_uri"):
        lines += [f"MLflow store `{report['tracking_uri']}`, experiment `{report.get('experiment')}`.", ""]
    for r in rows:
        lines.append(
            f"- {r['name']}: MLflow run `{r.get('mlflow_run_id') or '–'}`, model `{r.get('model_uri') or '–'}`, "
            f"outputs `{r.get('pipeline_dir') or '–'}`"
            + (f" — error: {r['error']}" if r.get("error") else "")
        )
    return "\n".join(lines) + "\n"
