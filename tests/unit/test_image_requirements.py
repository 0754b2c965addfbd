"""Every dependency clinrisk declares is in the serving image's closure or on its Dockerfile's list of known
gaps (the training stack): the image build's ``pip check`` fails otherwise. Without this test the gap showed
only in the Docker tier (threadpoolctl, session 12)."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _serving_requirements() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "serving_requirements", ROOT / "images" / "serving_requirements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dockerfile", ["serving.Dockerfile", "segmentation-serving.Dockerfile"])
def test_every_declared_dependency_is_in_the_serving_image_or_a_known_gap(dockerfile: str) -> None:
    sr = _serving_requirements()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {sr.canon(Requirement(d).name) for d in declared}
    text = (ROOT / "images" / dockerfile).read_text()
    gaps = re.search(r"requires \(([^)]*)\), which is not installed", text)
    assert gaps, f"{dockerfile}: no pip-check allow-list found"
    allowed = {sr.canon(n) for n in gaps.group(1).split("|")}
    missing = names - sr.closure(sr.ROOTS) - allowed
    assert not missing, (
        f"{dockerfile}: pip check would fail on {sorted(missing)}: add them to ROOTS or the list"
    )
    # The known gaps are exactly what the image must not carry.
    assert {sr.canon(n) for n in sr.TRAINING_ONLY} & names <= allowed
