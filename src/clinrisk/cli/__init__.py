"""The ``clinrisk`` command line: a thin Typer layer over the library (one module per area)."""

from __future__ import annotations

import typer

from clinrisk.cli import (
    data,
    evaluation,
    features,
    model,
    monitor,
    pipeline,
    rollout,
    selection,
    serve,
    validation,
)
from clinrisk.cli.common import ConfigOption, SetOption, handle_errors, load


def build_app() -> typer.Typer:
    """Assemble the root app from every area's commands."""
    app = typer.Typer(
        name="clinrisk",
        help="clinrisk: synthetic EHR patient-years to a served, monitored T2D risk model.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.command("config")(show_config)
    app.command("version")(show_version)
    for area in (data, validation, features, selection, model, evaluation, pipeline, serve, rollout, monitor):
        area.register(app)
    return app


def show_version() -> None:
    """Print the clinrisk version."""
    from clinrisk import __version__

    typer.echo(__version__)


@handle_errors
def show_config(config: ConfigOption = None, sets: SetOption = None) -> None:
    """Print the effective, validated configuration as YAML."""
    import yaml

    typer.echo(yaml.safe_dump(load(config, sets).to_dict(), sort_keys=False))


def main() -> None:
    """Console-script entry point."""
    build_app()()


if __name__ == "__main__":
    main()
