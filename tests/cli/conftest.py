"""Small real datasets for the CLI error-path tests: a generated + validated clinical run (300 patients), a
synthetic features dataset and a bundle trained on it (tests/model's helpers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clinrisk.cli.common import reset_state
from clinrisk.config import ClinriskConfig, load_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "clinical" / "tiny.yaml"
SMALL = ["generate.n_patients=300", "generate.block_size=100", "generate.n_shards=2", "generate.alpha=-4.6"]


def small_run_config(out: Path, *extra: str) -> ClinriskConfig:
    return load_config(TINY, [*SMALL, f"run.output_dir={out}", "run.workers=1", *extra])


@pytest.fixture(autouse=True)
def _fresh_cli_state() -> Iterator[None]:
    reset_state()
    yield
    reset_state()


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<out>/default`` with raw/ (generated) and validated/ (validated) of a 300-patient clinical run."""
    from clinrisk.usecase_io import generate_raw
    from clinrisk.validate import validate_dataset

    out = tmp_path_factory.mktemp("small-run")
    cfg = small_run_config(out)
    root = out / "default"
    generate_raw(cfg, root / "raw", workers=1, progress=False)
    validate_dataset(cfg, root / "raw", root, workers=1)
    return root


@pytest.fixture(scope="session")
def features_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.model.conftest import make_features_dataset

    return make_features_dataset(tmp_path_factory.mktemp("cli-features") / "features")


@pytest.fixture(scope="session")
def bundle_dir(features_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clinrisk.train import train_model
    from tests.model.conftest import small_config

    out = tmp_path_factory.mktemp("cli-bundle") / "bundle"
    train_model(small_config(), features_dir, out)
    return out
