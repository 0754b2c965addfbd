"""The ``clinrisk`` root app: every area's commands plus the CLIs that use cases bring (console script
``clinrisk = clinrisk.cli.app:main``; ``python -m clinrisk``).

Use-case CLIs are found through :func:`clinrisk.usecases.plugin_clis` by module name, so this shared module
names no plugin; they import the shared options from :mod:`clinrisk.cli.common` (a leaf of this package).
"""

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
from clinrisk.cli.common import (
    SELECTION,
    ConfigOption,
    DebugOption,
    SetOption,
    UsecaseOption,
    handle_errors,
    load,
    reset_state,
)
from clinrisk.usecases import plugin_clis


def build_app() -> typer.Typer:
    """Assemble the root app from every area's commands."""
    app = typer.Typer(
        name="clinrisk",
        help="clinrisk: synthetic EHR patient-years to a served, monitored T2D risk model.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.callback()(select_usecase)
    app.command("config")(show_config)
    app.command("version")(show_version)
    for area in (data, validation, features, selection, model, evaluation, pipeline, serve, rollout, monitor):
        area.register(app)
    # A use case may bring its own commands (clinrisk segmentation train|eval|infer|...), mounted as a
    # sub-app named after it; only installed plugins are imported, and only when the app is built.
    for register_cli in plugin_clis():
        register_cli(app)
    return app


@handle_errors
def select_usecase(usecase: UsecaseOption = None, debug: DebugOption = False) -> None:
    """clinrisk: synthetic data to a served, monitored risk model, for every registered use case.

    Expected failures (bad input, bad paths, corrupt files or stores, unreachable endpoints) print one
    `error: ...` line and exit 2; an unexpected error exits 1 and shows its traceback only with --debug."""
    reset_state(debug)
    if usecase is not None:
        from clinrisk.usecases import get

        get(usecase)  # unknown name: error listing the known ones, exit 2
        SELECTION["usecase"] = usecase


def show_version() -> None:
    """Print the clinrisk version."""
    from clinrisk import __version__

    typer.echo(__version__)


@handle_errors
def show_config(config: ConfigOption = None, sets: SetOption = None, usecase: UsecaseOption = None) -> None:
    """Print the effective, validated configuration as YAML."""
    import yaml

    typer.echo(yaml.safe_dump(load(config, sets, usecase=usecase).to_dict(), sort_keys=False))


def main() -> None:
    """Console-script entry point (SIGINT/SIGTERM: every child process stopped, one line, exit 130/143)."""
    from clinrisk.interrupts import interruptible

    with interruptible():
        build_app()()


if __name__ == "__main__":
    main()
