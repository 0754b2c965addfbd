"""`clinrisk features`: the features stage (:func:`clinrisk.stages.features.run`, what the KFP steps run)."""

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
    """Build the use case's features, labels and splits per shard (fit categories on training rows only)."""
    from clinrisk.errors import DataError
    from clinrisk.paths import RunPaths
    from clinrisk.stages import Catalog
    from clinrisk.stages import features as features_stage

    cfg = load(config, sets)
    if truth is not None and not truth.is_dir():
        raise DataError(f"{truth}: dataset directory not found")
    io = Catalog.for_run(RunPaths.for_config(cfg).root, validated=validated, truth=truth, features=out)
    out_dir = output_dir(io.path("features"))
    io = io.with_paths(features=out_dir)
    summary = features_stage.run(cfg, io, workers=workers)
    brief = {
        "out": str(out_dir),
        "rows": summary["rows"],
        "n_features": summary["n_features"],
        "per_split": {k: v["rows"] for k, v in summary["per_split"].items()},
        "unit_quarantine_rows": summary.get("unit_quarantine_rows"),
        "with_truth": summary["with_truth"],
    }
    typer.echo(json.dumps(brief, indent=2))


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("features")(features_cmd)
