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
    typer.Option("--config", "-c", help="YAML config (configs/default.yaml if omitted)"),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override any config key: section.key=value (repeatable)"),
]

DEFAULT_CONFIG = Path("configs/default.yaml")


def load(config: Path | None, sets: list[str] | None, extra: list[str] | None = None) -> Any:
    """Load the typed config (default file if present) with CLI overrides applied last."""
    from clinrisk.config import load_config

    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    return load_config(path, [*(extra or []), *(sets or [])])


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
