"""`clinrisk generate` and `clinrisk ingest`: the run folder's catalog + :mod:`clinrisk.stages.generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clinrisk.cli.common import ConfigOption, SetOption, UsecaseOption, handle_errors, load, output_dir


@handle_errors
def generate(
    config: ConfigOption = None,
    sets: SetOption = None,
    patients: Annotated[int | None, typer.Option("--patients", help="generate.n_patients")] = None,
    shards: Annotated[int | None, typer.Option("--shards", help="generate.n_shards")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="run.seed")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="worker processes (run.workers)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="output dir (default <run>/raw)")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")] = True,
    usecase: UsecaseOption = None,
) -> None:
    """Generate the use case's synthetic dataset (observed tables + truth + manifest)."""
    from clinrisk.stages import Catalog
    from clinrisk.stages import generate as generate_stage

    extra = []
    if patients is not None:
        extra.append(f"generate.n_patients={patients}")
    if shards is not None:
        extra.append(f"generate.n_shards={shards}")
    if seed is not None:
        extra.append(f"run.seed={seed}")
    if workers is not None:
        extra.append(f"run.workers={workers}")
    cfg = load(config, sets, extra, usecase=usecase)
    io = Catalog.for_config(cfg, raw=out)
    output_dir(io.path("raw"))
    m = generate_stage.run(cfg, io, progress=progress)
    prev = m.get("prevalence")
    if not isinstance(prev, dict):  # another use case (leads: a plain share): its manifest's own fields
        typer.echo(f"generated {m['rows']:,} rows in {m['n_shards']} shards (use case {cfg.run.usecase})")
        typer.echo(f"observed hash {m['observed_hash']}\nwritten to {m['path']}")
        return
    typer.echo(
        f"generated {m['rows']:,} rows for {m['patients']:,} patients in {m['n_shards']} shards "
        f"({m['rows_per_patient']:.2f} rows/patient)\n"
        f"alpha={m['alpha']:.4f}  H={prev['horizon']} row prevalence: recorded {prev['recorded']:.4f}, "
        f"true {prev['true']:.4f} over {prev['eligible_rows']:,} eligible rows\n"
        f"hba1c missing {m['hba1c_missing_share']:.3f}\n"
        f"observed hash {m['observed_hash']}\ntruth hash    {m['truth_hash']}\n"
        f"written to {m['path']}"
    )


@handle_errors
def ingest(
    source: Annotated[Path, typer.Option("--source", help="the use case's real files (a directory or file)")],
    config: ConfigOption = None,
    sets: SetOption = None,
    shards: Annotated[int, typer.Option("--shards", min=1, help="shards (an entity never spans shards)")] = 1,
    out: Annotated[Path | None, typer.Option("--out", help="output dir (default <run>/raw)")] = None,
    usecase: UsecaseOption = None,
) -> None:
    """Ingest a real export in the use case's file format into the raw layout (then `clinrisk validate`)."""
    from clinrisk.stages import Catalog
    from clinrisk.stages import generate as generate_stage

    cfg = load(config, sets, usecase=usecase)
    io = Catalog.for_config(cfg, raw=out)
    output_dir(io.path("raw"))
    m = generate_stage.ingest(cfg, io, source, shards)
    typer.echo(
        f"ingested {m['rows']:,} rows of use case {m['usecase']} into {m['n_shards']} shard(s): {m['path']}"
    )


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("generate")(generate)
    app.command("ingest")(ingest)
