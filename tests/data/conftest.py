"""Generator fixtures (names start with gen_): small datasets built once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clinrisk.config import ClinriskConfig, load_config

GEN_BASE_OVERRIDES = [
    "run.seed=11",
    "generate.block_size=250",
    "generate.chunk_patients=2000",
    "generate.calibration_patients=4000",
]


@pytest.fixture(scope="session")
def gen_config() -> Callable[..., ClinriskConfig]:
    """Factory: a small generator config with extra dotted overrides."""

    def make(*overrides: str) -> ClinriskConfig:
        return load_config(None, [*GEN_BASE_OVERRIDES, *overrides])

    return make


@pytest.fixture(scope="session")
def gen_dataset(
    tmp_path_factory: pytest.TempPathFactory, gen_config: Callable[..., ClinriskConfig]
) -> tuple[Path, dict[str, Any]]:
    """A 4000-patient raw dataset (4 shards) and its manifest."""
    from clinrisk.generate import generate_dataset

    cfg = gen_config("generate.n_patients=4000", "generate.n_shards=4")
    out = tmp_path_factory.mktemp("gen") / "raw"
    manifest = generate_dataset(cfg, out, workers=1, progress=False)
    return out, manifest
