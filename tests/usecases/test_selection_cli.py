"""Selecting a use case: ``--usecase`` on the CLI, ``run.usecase`` in the config, names from the use case."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from clinrisk.cli.app import build_app
from clinrisk.cli.common import SELECTION
from clinrisk.config import load_config
from clinrisk.usecases import get, known

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clear_selection() -> None:
    SELECTION.clear()


def test_unknown_usecase_lists_the_known_ones_and_exits_2() -> None:
    # A real process: the message, the exit code, and no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "clinrisk", "--usecase", "nope", "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert f"error: unknown use case 'nope'; known: {', '.join(known())}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("where", ["root", "command"])
def test_usecase_option_selects_its_default_config(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    args = ["--usecase", "clinical", "config"] if where == "root" else ["config", "--usecase", "clinical"]
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(res.output)
    assert cfg["run"]["usecase"] == "clinical"
    assert cfg == load_config(REPO / "configs" / "clinical" / "default.yaml").to_dict()


def test_unknown_usecase_with_a_config_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("run:\n  usecase: clinical\n")
    res = CliRunner().invoke(build_app(), ["config", "--usecase", "nope", "--config", str(other)])
    assert res.exit_code == 2
    assert "unknown use case 'nope'" in res.output


@pytest.mark.skipif(len(known()) < 2, reason="needs a second registered use case")
def test_usecase_option_refuses_a_config_of_another_usecase() -> None:
    second = known()[1]
    res = CliRunner().invoke(
        build_app(), ["config", "--usecase", second, "--config", str(REPO / "configs/clinical/tiny.yaml")]
    )
    assert res.exit_code == 2
    assert f"--usecase {second}:" in res.output and "configures use case 'clinical'" in res.output


def test_names_default_to_the_usecase_and_explicit_settings_win() -> None:
    names = get("clinical").names
    cfg = load_config(None)
    assert cfg.tracking.registered_model_name == names.model_name
    assert cfg.tracking.experiment_name == names.experiment
    assert (cfg.serving.model_name, cfg.serving.namespace) == (names.model_name, names.namespace)
    cfg = load_config(None, ["serving.namespace=team-a", "tracking.registered_model_name=t2d"])
    assert cfg.serving.namespace == "team-a" and cfg.tracking.registered_model_name == "t2d"


def test_make_run_passes_the_usecase() -> None:
    out = subprocess.run(
        ["make", "-n", "run", "USECASE=clinical"], capture_output=True, text=True, cwd=REPO, timeout=60
    ).stdout
    assert "clinrisk run --usecase clinical --config configs/clinical/default.yaml" in out


def test_legacy_config_paths_are_the_clinical_ones() -> None:
    for name in ("default", "tiny"):
        assert (REPO / "configs" / f"{name}.yaml").resolve() == (
            REPO / "configs" / "clinical" / f"{name}.yaml"
        )
