"""Shared CLI plumbing: config options, overrides, and turning library errors into clean exits."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from clinrisk.errors import ClinriskError

F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config (the use case's configs/<name>/default.yaml if omitted)"
    ),
]
UsecaseOption = Annotated[
    str | None,
    typer.Option(
        "--usecase",
        "-u",
        help="use case (clinical, the default; leads); without --config its configs/<name>/default.yaml",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override any config key: section.key=value (repeatable)"),
]

DEFAULT_CONFIG = Path("configs/default.yaml")
# The root ``clinrisk --usecase NAME`` option (a command's own ``--usecase`` wins over it).
SELECTION: dict[str, str] = {}


def config_source(config: Path | None, usecase: str | None = None) -> tuple[Path | None, list[str]]:
    """The config file and leading overrides a command loads: ``--config`` if given, else the selected use
    case's default config (``configs/<name>/default.yaml``; the embedded defaults when it is absent).
    An unknown use case is a ConfigError listing the known ones."""
    from clinrisk.usecases import get

    name = usecase or SELECTION.get("usecase")
    if name is None:
        return (config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)), []
    uc = get(name)
    if config is not None:
        return config, []  # load() checks that the file is for this use case
    default = Path(uc.configs.get("default", ""))
    return (default if default.is_file() else None), [f"run.usecase={name}"]


def load(
    config: Path | None, sets: list[str] | None, extra: list[str] | None = None, usecase: str | None = None
) -> Any:
    """Load the typed config (``config_source``) with CLI overrides applied last."""
    from clinrisk.config import load_config
    from clinrisk.errors import ConfigError

    path, lead = config_source(config, usecase)
    cfg = load_config(path, [*lead, *(extra or []), *(sets or [])])
    name = usecase or SELECTION.get("usecase")
    if name is not None and cfg.run.usecase != name:
        raise ConfigError(f"--usecase {name}: {path} configures use case {cfg.run.usecase!r}")
    return cfg


def handle_errors(fn: F) -> F:
    """Print ClinriskError messages as ``error: ...`` and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClinriskError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
