"""Shared CLI plumbing: config options, overrides, and turning failures into one ``error:`` line."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from clinrisk.errors import DataError, describe_failure

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
DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug",
        help="on an unexpected error, show the Python traceback (also: CLINRISK_DEBUG=1)",
        envvar="CLINRISK_DEBUG",
    ),
]

DEFAULT_CONFIG = Path("configs/default.yaml")
# The one runner vocabulary of `pipeline run` and `experiments run` (kfp.local's runner names).
RUNNERS = ("subprocess", "docker")
# Older spellings still accepted, each with a one-line deprecation notice on stderr.
RUNNER_ALIASES = {"local": "subprocess"}
# The root ``clinrisk --usecase NAME`` option (a command's own ``--usecase`` wins over it).
SELECTION: dict[str, str] = {}
# Per-invocation state: ``debug`` (the root --debug flag) and ``cfg`` (the config the command loaded, so that
# an error from its tracking store can name the store). Reset by the root callback on every invocation.
STATE: dict[str, Any] = {}
# Set once the built-in-defaults notice was printed: a command that loads its config twice says it once.
_NOTICE: dict[str, bool] = {}


def reset_state(debug: bool = False) -> None:
    """Start an invocation with no leftover state (CliRunner reuses the process between invocations)."""
    SELECTION.clear()
    STATE.clear()
    _NOTICE.clear()
    STATE["debug"] = debug


def _builtin_notice(usecase: str, missing: Path) -> None:
    """Say on stderr, once, that no config file was found and the built-in defaults are used."""
    if _NOTICE.get("builtin"):
        return
    _NOTICE["builtin"] = True
    typer.echo(
        f"clinrisk: no --config given and no {missing} in {Path.cwd()}: using the built-in defaults of use "
        f"case {usecase!r} (`clinrisk config` prints them)",
        err=True,
    )


def config_source(config: Path | None, usecase: str | None = None) -> tuple[Path | None, list[str]]:
    """The config file and leading overrides a command loads: ``--config`` if given, else the selected use
    case's default config (``configs/<name>/default.yaml``; the embedded defaults when it is absent, which is
    said once on stderr). An unknown use case is a ConfigError listing the known ones."""
    from clinrisk.usecases import DEFAULT_USECASE, get

    name = usecase or SELECTION.get("usecase")
    if name is None:
        if config is not None:
            return config, []
        if DEFAULT_CONFIG.is_file():
            return DEFAULT_CONFIG, []
        _builtin_notice(DEFAULT_USECASE, DEFAULT_CONFIG)
        return None, []
    uc = get(name)
    if config is not None:
        return config, []  # load() checks that the file is for this use case
    default = Path(uc.configs.get("default", ""))
    if not default.is_file():
        _builtin_notice(name, default)
        return None, [f"run.usecase={name}"]
    return default, [f"run.usecase={name}"]


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
    STATE["cfg"] = cfg
    return cfg


def check_runner(runner: str) -> str:
    """``--runner`` in the one vocabulary (:data:`RUNNERS`); ``local`` still works, with a notice."""
    from clinrisk.errors import ConfigError

    if runner in RUNNER_ALIASES:
        new = RUNNER_ALIASES[runner]
        typer.echo(f"clinrisk: --runner {runner} is deprecated; use --runner {new}", err=True)
        return new
    if runner not in RUNNERS:
        raise ConfigError(f"--runner: unknown runner {runner!r} ({' or '.join(RUNNERS)})")
    return runner


def output_dir(path: Path) -> Path:
    """A command's output folder, checked writable before any work (:func:`clinrisk.io.check_output_dir`)."""
    from clinrisk.io import check_output_dir

    return check_output_dir(path)


def existing_store(cfg: Any, run_dir: Path | None = None) -> str:
    """The tracking URI of a command that only reads the registry. A local store must exist already: a
    reading command never creates one (MLflow would silently make an empty ``mlflow.db``), and a file that
    is not SQLite is named as corrupt before the driver's traceback."""
    from clinrisk.io import check_sqlite_file
    from clinrisk.tracking import tracking_uri

    uri = tracking_uri(cfg, run_dir)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise DataError(
                f"no MLflow store at {db}: run the pipeline first, or give the run's config with --config "
                "(or tracking.tracking_uri)"
            )
        check_sqlite_file(db)
    return uri


def check_local_store(cfg: Any, run_dir: Path | None = None) -> None:
    """For a command that writes the registry (and creates a missing store): an existing local store must be
    SQLite, else a DataError naming the file before the driver's traceback."""
    from clinrisk.io import check_sqlite_file
    from clinrisk.tracking import tracking_uri

    uri = tracking_uri(cfg, run_dir)
    if uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).is_file():
        check_sqlite_file(Path(uri.removeprefix("sqlite:///")))


def _store_of(cfg: Any) -> str | None:
    if cfg is None:
        return None
    try:
        from clinrisk.tracking import tracking_uri

        return str(tracking_uri(cfg))
    except Exception:  # naming the store is a courtesy; never mask the error being reported
        return None


def debug_enabled() -> bool:
    """The root ``--debug`` flag or ``CLINRISK_DEBUG=1``."""
    return bool(STATE.get("debug")) or os.environ.get("CLINRISK_DEBUG", "") not in ("", "0", "false")


def report_failure(exc: BaseException) -> int:
    """Print ``exc`` as one ``error:`` line and return the exit code: 2 for an expected failure (bad input,
    bad path, corrupt file or store, unreachable endpoint), 1 for a bug. ``--debug`` adds the traceback."""
    message = describe_failure(exc, _store_of(STATE.get("cfg")))
    if debug_enabled():
        traceback.print_exception(exc)
    if message is None:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        typer.secho(
            f"error: unexpected {type(exc).__name__}: {first} (a bug in clinrisk; "
            "`clinrisk --debug ...` shows the traceback)",
            fg=typer.colors.RED,
            err=True,
        )
        return 1
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return 2


def handle_errors(fn: F) -> F:
    """Run a command; any failure becomes one ``error:`` line (:func:`report_failure`) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own exits and usage errors (exit 2 with usage) pass through
        except KeyboardInterrupt:
            # Ctrl-C: cleanup (finally blocks, atomic dirs) has run on the way up; no traceback for it.
            if debug_enabled():
                traceback.print_exc()
            typer.secho("error: interrupted", fg=typer.colors.RED, err=True)
            sys.exit(130)
        except Exception as exc:
            sys.exit(report_failure(exc))

    wrapper.handles_errors = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
