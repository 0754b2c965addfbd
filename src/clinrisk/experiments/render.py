"""The comparison report: Markdown/HTML rendering and logging it to the suite's MLflow run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from clinrisk.experiments.suite import COMPARISON_HTML, COMPARISON_JSON, COMPARISON_MD, TABLE_METRICS


def publish_comparison(report: dict[str, Any], dest: Path, markdown: str, suite_name: str) -> dict[str, Any]:
    """Write the report as JSON, Markdown and HTML under ``dest``, log them to MLflow, and record both in it."""
    from clinrisk.io import json_safe, write_json
    from clinrisk.report import markdown_to_html

    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / COMPARISON_JSON, json_safe(report))
    (dest / COMPARISON_MD).write_text(markdown)
    (dest / COMPARISON_HTML).write_text(markdown_to_html(markdown, f"clinrisk experiment suite {suite_name}"))
    report["files"] = {
        "json": str(dest / COMPARISON_JSON),
        "markdown": str(dest / COMPARISON_MD),
        "html": str(dest / COMPARISON_HTML),
    }
    report["mlflow_comparison_run_id"] = log_comparison(report, dest)
    return report


def log_comparison(report: dict[str, Any], dest: Path) -> str | None:
    """Log the comparison (JSON, Markdown, HTML) as its own finished MLflow run in the suite's experiment, so
    users find it beside the runs it compares; None when the suite tracked into no store we know."""
    uri, name = report.get("tracking_uri"), report.get("experiment")
    if not uri or not name:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=str(uri))
    experiment = client.get_experiment_by_name(str(name))
    if experiment is None:
        return None
    run = client.create_run(
        experiment.experiment_id,
        run_name=f"comparison-{report['suite']}",
        tags={"clinrisk.kind": "experiment-comparison", "mlflow.note.content": _headline(report)},
    )
    for file in (COMPARISON_JSON, COMPARISON_MD, COMPARISON_HTML):
        client.log_artifact(run.info.run_id, str(dest / file), "comparison")
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def _headline(report: dict[str, Any]) -> str:
    winners = ", ".join(str(w.get("winner") or "none") for w in report.get("winners") or [])
    return (
        f"Experiment suite `{report['suite']}`: {len(report['runs'])} runs; winner(s): {winners or 'none'}."
    )


def _fmt(x: Any, spec: str = ".4f") -> str:
    return format(x, spec) if isinstance(x, int | float) and math.isfinite(float(x)) else "–"


def render_comparison(report: dict[str, Any]) -> str:
    """Markdown: metrics table, paired deltas with CIs, the winner rule and verdict, MLflow links."""
    lines = [
        f"# Experiment suite `{report['suite']}`",
        "",
        report.get("description") or "",
        "",
        f"Net benefit at p_t = {report['p_t']:g}; paired patient-cluster bootstrap, B = "
        f"{report['bootstrap_replicates']}, {report['ci_level']:.0%} percentile intervals; deltas are "
        "run − baseline on the (patient_id, year) rows both scored.",
        "",
        "## Metrics (test split)",
        "",
        "| run | key change | true Brier | true AP | true NB | true AUC | rec Brier | rec AP | rec NB | "
        "rec AUC | peak RSS MB | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        m = r.get("metrics") or {}
        t, rc = m.get("true", {}), m.get("recorded", {})
        lines.append(
            f"| {r['name']}{' (baseline)' if r['is_baseline'] else ''} | {r.get('key_change') or ''} | "
            + " | ".join(_fmt(t.get(k)) for k in TABLE_METRICS)
            + " | "
            + " | ".join(_fmt(rc.get(k)) for k in TABLE_METRICS)
            + f" | {_fmt(r.get('peak_rss_mb'), '.0f')} | {r.get('status')} |"
        )
    lines += [
        "",
        "## Paired deltas vs baseline",
        "",
        "| run | baseline | labels | ΔBrier [CI] | ΔAP [CI] | ΔNB [CI] | ΔAUC [CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        d = r.get("delta")
        if not d:
            continue
        if "error" in d:
            lines.append(f"| {r['name']} | {r['baseline']} | – | {d['error']} | | | |")
            continue
        for lab in ("true", "recorded"):
            cells = []
            for k in TABLE_METRICS:
                v = d[lab].get(k)
                cells.append(
                    f"{_fmt(v['diff'], '+.4f')} [{_fmt(v['lo'], '+.4f')}, {_fmt(v['hi'], '+.4f')}]"
                    if v
                    else "–"
                )
            lines.append(f"| {r['name']} | {r['baseline']} | {lab} | " + " | ".join(cells) + " |")
    sel = [r for r in report["runs"] if r.get("selection")]
    if sel:
        lines += [
            "",
            "## Feature selection step (its own validation check vs the full set)",
            "",
            "Training uses the selected set only if it passed the non-inferiority check (ΔAP ≥ −0.005 and "
            "ΔBrier ≤ +0.0005); otherwise it falls back to all features, and the test metrics above are "
            "those of the full set.",
            "",
            "| run | features before → selected | validation ΔAP | validation ΔBrier | validation rows | "
            "passed | used for training | peak RSS MB | wall s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sel:
            x = r["selection"]
            lines.append(
                f"| {r['name']} | {x['n_features_before']} → {x['n_features_selected']} | "
                f"{_fmt(x['validation_delta_ap'], '+.4f')} | {_fmt(x['validation_delta_brier'], '+.5f')} | "
                f"{x.get('validation_rows') or '–'} | {x['acceptable']} | {x['used_for_training']} | "
                f"{_fmt(x['peak_rss_mb'], '.0f')} | {_fmt(x['wall_s'], '.1f')} |"
            )
    lines += ["", "## Winner", "", f"Rule: {report['winner_rule']['statement']}.", ""]
    for w in report["winners"]:
        cell = f" (cell `{w['cell']}`)" if w.get("cell") else ""
        lines.append(f"- **{w['winner']}**{cell}: {w['reason']}")
    for w in report["winners"]:
        if "per_run" not in w or not any("se_paired" in v for v in w["per_run"].values()):
            continue
        rw = report["winner_rule"]
        lines += [
            "",
            f"One-SE rule detail{' (cell `' + w['cell'] + '`)' if w.get('cell') else ''}: "
            f"{rw['labels']}-label {rw['metric']} on the {rw['split']} split; Δ = arm − best "
            f"({w['best']}) on the paired rows; unpaired SE = the arm's own bootstrap SE, for comparison.",
            "",
            f"| arm | {rw['metric']} | Δ vs best | paired SE | eligible | paired rows | unpaired SE |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, v in w["per_run"].items():
            mark = " (best)" if name == w["best"] else ""
            win = " **winner**" if name == w["winner"] else ""
            lines.append(
                f"| {name}{mark}{win} | {_fmt(v['value'], '.5f')} | {_fmt(v.get('diff_vs_best'), '+.5f')} | "
                f"{_fmt(v.get('se_paired'), '.5f')} | {'yes' if v.get('eligible') else 'no'} | "
                f"{v.get('n_paired_rows', '–')} | {_fmt(v.get('se_unpaired'), '.5f')} |"
            )
    lines += ["", "## Links", ""]
    if report.get("tracking_uri"):
        lines.append(f"MLflow store `{report['tracking_uri']}`, experiment `{report.get('experiment')}`.")
        lines.append("")
    for r in report["runs"]:
        lines.append(
            f"- {r['name']}: MLflow run `{r.get('mlflow_run_id') or '–'}`, model `{r.get('model_uri') or '–'}`, "
            f"outputs `{r.get('pipeline_dir') or '–'}`"
            + (f" — error: {r['error']}" if r.get("error") else "")
        )
    return "\n".join(lines) + "\n"
