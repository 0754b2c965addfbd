"""`clinrisk validate`: check raw shards against the raw schema, quarantine failing rows, write a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clinrisk.cli.common import ConfigOption, SetOption, UsecaseOption, handle_errors, load, output_dir

RawOption = Annotated[Path | None, typer.Option("--raw", help="raw dataset dir (default: <run>/raw)")]
OutOption = Annotated[
    Path | None,
    typer.Option("--out", help="output root for validated/, quarantine/, validation/ (default: the run dir)"),
]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", "-w", min=1, help="worker processes (default: run.workers)")
]


@handle_errors
def validate_cmd(
    config: ConfigOption = None,
    sets: SetOption = None,
    raw: RawOption = None,
    out: OutOption = None,
    workers: WorkersOption = None,
    usecase: UsecaseOption = None,
) -> None:
    """Validate raw shards with the use case's schema; passing rows -> validated/, failing rows ->
    quarantine/ with reasons."""
    from clinrisk.stages import Catalog
    from clinrisk.stages import validate as validate_stage

    cfg = load(config, sets, usecase=usecase)
    io = Catalog.for_config(cfg)
    if out is not None:  # --out moves the three outputs, not the input
        io = Catalog.for_run(out).with_paths(raw=io.path("raw"))
    io = io.with_paths(raw=raw)
    output_dir(io.path("validated"))
    report = validate_stage.run(cfg, io, workers=workers)
    typer.echo(
        f"validated {report['rows_in']:,} rows in {report['n_shards']} shard(s): "
        f"{report['rows_valid']:,} valid, {report['rows_quarantined']:,} quarantined "
        f"({report['quarantine_fraction']:.3%})"
    )
    for f in sorted(report["failures_by_check"], key=lambda f: -f["rows"])[:10]:
        typer.echo(f"  {f['check']:<24} {f['column']:<28} {f['rows']:>10,}")
    typer.echo(f"report: {io.path('validation') / 'report.md'}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("validate")(validate_cmd)
