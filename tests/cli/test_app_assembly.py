"""The root app's assembly: clinrisk.cli.app mounts every area and the use cases' own CLIs from the registry;
importing the CLI package or the app imports no plugin and runs nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from clinrisk import usecases
from clinrisk.cli.app import build_app
from clinrisk.errors import ConfigError


@pytest.fixture
def cli_registry() -> Iterator[dict[str, str]]:
    saved = dict(usecases.CLI_REGISTRY)
    try:
        yield usecases.CLI_REGISTRY
    finally:
        usecases.CLI_REGISTRY.clear()
        usecases.CLI_REGISTRY.update(saved)


def test_importing_the_cli_imports_no_plugin_and_runs_nothing() -> None:
    code = (
        "import sys, clinrisk.cli, clinrisk.cli.app\n"
        "print(sorted(n for n in sys.modules if n.startswith('clinrisk.usecases.')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['clinrisk.usecases.base']"
    assert proc.stderr == ""


def test_the_plugin_cli_is_mounted_from_the_registry() -> None:
    runner = CliRunner()
    result = runner.invoke(build_app(), ["segmentation", "--help"])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "serve" in result.output


def test_python_m_clinrisk_and_the_console_script_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "clinrisk", "--usecase", "nope", "config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown use case 'nope'; known: clinical")
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "clinrisk"]
    assert script.value == "clinrisk.cli.app:main"


def test_a_registered_plugin_cli_is_mounted_and_a_missing_one_skipped(cli_registry: dict[str, str]) -> None:
    cli_registry["ghost"] = "clinrisk_no_such_plugin.cli:register"  # not installed: skipped
    cli_registry["extra"] = f"{__name__}:register_extra"
    result = CliRunner().invoke(build_app(), ["extra", "hello"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "hello from a plugin"


def test_a_malformed_plugin_cli_target_is_a_config_error(cli_registry: dict[str, str]) -> None:
    cli_registry["broken"] = "no_colon_here"
    with pytest.raises(ConfigError, match=r"'broken'.*'module:function'"):
        usecases.plugin_clis()


_extra = typer.Typer(name="extra")


@_extra.command("hello")
def _hello() -> None:
    typer.echo("hello from a plugin")


@_extra.command("other")
def _other() -> None:  # two commands: Typer keeps the group (one would be collapsed into the sub-app)
    typer.echo("other")


def register_extra(root: typer.Typer) -> None:
    root.add_typer(_extra, name="extra")
