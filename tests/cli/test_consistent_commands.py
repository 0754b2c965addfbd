"""Consistent commands (issue 19): help on every command and option, every command on the one error path,
one runner vocabulary, `make help` listing every target, make targets whose names say what they do, and
network errors as one line naming the endpoint."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from clinrisk.cli.app import build_app
from clinrisk.errors import describe_failure
from tests.cli.conftest import REPO
from tests.cli.test_error_path import assert_one_error, invoke

NO_ERROR_PATH = {"version"}  # prints a constant; nothing can fail


def _commands(group: TyperGroup, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, cmd in sorted(group.commands.items()):
        path = f"{prefix} {name}".strip()
        out.append((path, cmd))
        if isinstance(cmd, TyperGroup):
            out.extend(_commands(cmd, path))
    return out


def test_every_command_and_option_has_help() -> None:
    root = typer.main.get_command(build_app())
    assert isinstance(root, TyperGroup)
    missing: list[str] = []
    for path, cmd in [("clinrisk", root), *_commands(root)]:
        if not (cmd.help or cmd.short_help):
            missing.append(f"{path}: no help")
        for p in cmd.params:
            if isinstance(p, TyperOption) and not (p.help or "").strip():
                missing.append(f"{path} {p.opts[0]}: no help")
            if isinstance(p, TyperArgument) and not (getattr(p, "help", "") or "").strip():
                missing.append(f"{path} {p.name}: argument without help")
    assert not missing, "\n".join(missing)


def test_every_command_is_on_the_one_error_path() -> None:
    root = typer.main.get_command(build_app())
    assert isinstance(root, TyperGroup)
    unwrapped = [
        path
        for path, cmd in _commands(root)
        if not isinstance(cmd, TyperGroup)
        and cmd.name not in NO_ERROR_PATH
        and not getattr(cmd.callback, "handles_errors", False)
        and not getattr(getattr(cmd.callback, "__wrapped__", None), "handles_errors", False)
    ]
    assert not unwrapped, f"commands without handle_errors: {unwrapped}"


def test_one_runner_vocabulary() -> None:
    root = typer.main.get_command(build_app())
    assert isinstance(root, TyperGroup)
    helps = {}
    for path, cmd in _commands(root):
        for p in cmd.params:
            if isinstance(p, TyperOption) and "--runner" in p.opts:
                helps[path] = (p.default, p.help or "")
    assert set(helps) >= {"pipeline run", "experiments run"}, helps
    for path, (default, text) in helps.items():
        assert default == "subprocess" and "subprocess" in text and "docker" in text, (path, default, text)
        assert "local" not in text.replace("kfp.local", ""), (path, text)


def test_old_runner_spelling_is_a_deprecated_alias() -> None:
    from clinrisk.cli.common import check_runner
    from clinrisk.errors import ConfigError

    assert check_runner("local") == "subprocess"
    assert check_runner("docker") == "docker"
    with pytest.raises(ConfigError, match="subprocess or docker"):
        check_runner("kubernetes")


# ------------------------------------------------------------------------------------------ Makefile


def _make_targets() -> dict[str, str]:
    targets = {}
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_-][A-Za-z0-9_.-]*):(?!=)(.*)$", line)
        if m:
            note = m.group(2).split("## ", 1)
            targets[m.group(1)] = note[1].strip() if len(note) == 2 else ""
    return targets


def test_make_help_lists_every_target_with_what_it_does() -> None:
    targets = _make_targets()
    assert {"k8s-tools", "k8s-validate", "rollout-promote", "help"} <= set(targets)
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = {ln.split()[0]: ln for ln in out.stdout.splitlines() if ln.strip()}
    assert set(listed) == set(targets), set(targets) ^ set(listed)
    undocumented = [t for t, note in targets.items() if not note]
    assert not undocumented, f"targets without a ## note: {undocumented}"


def test_make_targets_say_what_they_do_and_docs_use_them() -> None:
    targets = _make_targets()
    # KServe traffic moves are rollout-*; `promote` alone would read as the registry gate (`clinrisk promote`).
    assert not {"promote", "rollback", "canary"} & set(targets)
    assert {"rollout-canary", "rollout-promote", "rollout-rollback", "rollout-status"} <= set(targets)
    for doc in ("README.md", "docs/kubernetes.md"):
        text = (REPO / doc).read_text()
        for name in re.findall(r"(?:`|^\s*)make\s+([a-z][a-z0-9-]*)", text, re.M):
            assert name in targets, f"{doc}: `make {name}` is not a Makefile target"


# ---------------------------------------------------------------------------------------- network


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_network_errors_are_one_line_naming_the_endpoint() -> None:
    import requests

    port = _closed_port()
    url = f"http://127.0.0.1:{port}/api/v1/healthz"
    with pytest.raises(requests.RequestException) as caught:
        requests.get(url, timeout=5)
    text = describe_failure(caught.value)
    assert text is not None and "\n" not in text
    assert text.startswith(f"cannot reach {url}") and "refused" in text.lower(), text

    import urllib3

    pool = urllib3.PoolManager(retries=urllib3.Retry(0))
    with pytest.raises(urllib3.exceptions.HTTPError) as caught2:
        pool.request("GET", f"http://127.0.0.1:{port}/apis/v2beta1/runs")
    text = describe_failure(caught2.value)
    assert text is not None and f"127.0.0.1:{port}" in text and "\n" not in text, text


def test_pipeline_submit_to_an_unreachable_host_is_one_line(tmp_path: Path) -> None:
    port = _closed_port()
    code, errors, out = invoke("pipeline", "submit", "--host", f"http://127.0.0.1:{port}")
    assert_one_error(code, errors, out, f"127.0.0.1:{port}")
    assert len(out.strip().splitlines()) <= 3, out


def test_bugs_are_not_mistaken_for_expected_failures() -> None:
    def bug() -> Any:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError:
            return {}["missing"]  # a KeyError raised while handling a network error is still a bug

    with pytest.raises(KeyError) as caught:
        bug()
    assert describe_failure(caught.value) is None
    assert describe_failure(ValueError("x")) is None
    assert describe_failure(FileNotFoundError(2, "No such file or directory", "/x/y")) == (
        "/x/y: no such file or directory"
    )


def test_a_parquet_decoding_error_is_an_expected_failure(tmp_path: Path) -> None:
    """The fallback for damage past a whole footer: polars' own error is one line, exit 2."""
    import polars as pl

    f = tmp_path / "x.parquet"
    pl.DataFrame({"a": list(range(10_000))}).write_parquet(f, compression="uncompressed")
    data = bytearray(f.read_bytes())
    data[4:40] = b"\xff" * 36  # the first page header damaged, footer intact
    f.write_bytes(bytes(data))
    with pytest.raises(pl.exceptions.PolarsError) as caught:
        pl.read_parquet(f)
    text = describe_failure(caught.value)
    assert text is not None and "Parquet" in text and "\n" not in text, text
