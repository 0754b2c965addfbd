"""`clinrisk select`: feature selection under a memory budget (filters + stability selection with probes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from clinrisk.cli.common import ConfigOption, SetOption, handle_errors, load, output_dir

FeaturesOption = Annotated[
    Path | None, typer.Option("--features", help="features dataset dir (default: <run>/features)")
]
OutOption = Annotated[Path | None, typer.Option("--out", help="output dir (default: <run>/selection)")]


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """Human-readable summary of a selected_features.json document."""
    lines = [
        f"features: {doc['n_features_before']} before, {doc['n_features_after_filters']} after filters, "
        f"{doc['n_features_selected']} selected"
    ]
    for reason, names in sorted(doc.get("dropped", {}).items()):
        lines.append(
            f"  dropped {reason:<13} {len(names):>4}  {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
        )
    if "sample" in doc:
        s = doc["sample"]
        lines.append(
            f"sample: {s['rows']:,} training rows / {s['patients']:,} patients "
            f"(of {s['train_rows_total']:,} rows; cap {s['row_cap']:,})"
        )
    ev = doc.get("evaluation", {})
    if "delta_ap" in ev:
        lines.append(
            f"validation: AP {ev['full']['ap']:.4f} -> {ev['selected']['ap']:.4f} (ΔAP {ev['delta_ap']:+.4f}), "
            f"Brier {ev['full']['brier']:.5f} -> {ev['selected']['brier']:.5f} "
            f"(ΔBrier {ev['delta_brier']:+.5f}); acceptable: {ev['acceptable']}"
        )
    elif ev:
        lines.append(f"validation: ΔAP n/a ({ev.get('skipped', 'not run')})")
    q = doc.get("quality")
    if q:
        lines.append(
            f"hazard-family recall {_fmt(q['hazard_family_recall'], '.2f')}, "
            f"probe false selection {_fmt(q['probe_false_selection_rate'], '.2f')}, "
            f"noise-code false selection {_fmt(q['noise_false_selection_rate'], '.2f')}, "
            f"stability (Jaccard) {doc['stability']['mean_pairwise_jaccard']:.3f}"
        )
    r = doc["resources"]
    lines.append(
        f"peak RSS {r['peak_rss_mb']:.0f} MB (budget {r['memory_budget_mb']} MB, "
        f"within: {r['within_budget']}), wall {r['wall_s']:.1f} s"
    )
    return lines


@handle_errors
def select_cmd(
    config: ConfigOption = None,
    sets: SetOption = None,
    features: FeaturesOption = None,
    out: OutOption = None,
) -> None:
    """Select features on a patient-grouped training sample; writes selected_features.json."""
    from clinrisk.paths import RunPaths
    from clinrisk.selection import SELECTION_FILE
    from clinrisk.stages import Catalog, select

    cfg = load(config, sets)
    io = Catalog.for_run(RunPaths.for_config(cfg).root, features=features, selection=out)
    out_dir = output_dir(io.path("selection"))
    io = io.with_paths(selection=out_dir)
    doc = select.run(cfg, io)
    for line in summary_lines(doc):
        typer.echo(line)
    typer.echo(f"selection: {out_dir / SELECTION_FILE}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("select")(select_cmd)
