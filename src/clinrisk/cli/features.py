"""`clinrisk features`: a thin wrapper over ``clinrisk.features_stage.build_features_dataset``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from clinrisk.cli.common import ConfigOption, SetOption, handle_errors, load, output_dir


@handle_errors
def features_cmd(
    config: ConfigOption = None,
    sets: SetOption = None,
    validated: Annotated[
        Path | None, typer.Option("--validated", help="validated shards (default: run's validated/)")
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option("--truth", help="truth shards for eval_* columns (default: run's raw/truth if present)"),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="output dir (default: run's features/)")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="processes (default run.workers)")] = None,
) -> None:
    """Build features, labels and splits per shard (fit categories on training rows only)."""
    from clinrisk.features_stage import build_features_dataset
    from clinrisk.paths import RunPaths

    cfg = load(config, sets)
    paths = RunPaths.for_config(cfg)
    validated_dir = validated if validated is not None else paths.validated
    truth_dir = truth
    if truth_dir is None and (paths.raw / "truth").is_dir():
        truth_dir = paths.raw / "truth"
    out_dir = output_dir(out if out is not None else paths.features)
    summary = build_features_dataset(cfg, validated_dir, out_dir, truth_dir, workers=workers)
    brief = {
        "out": str(out_dir),
        "rows": summary["rows"],
        "n_features": summary["n_features"],
        "per_split": {k: v["rows"] for k, v in summary["per_split"].items()},
        "unit_quarantine_rows": summary["unit_quarantine_rows"],
        "with_truth": summary["with_truth"],
    }
    typer.echo(json.dumps(brief, indent=2))


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("features")(features_cmd)
