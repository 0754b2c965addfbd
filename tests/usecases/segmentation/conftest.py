"""Shared fixtures: the tiny config (seconds) and one trained tiny checkpoint per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "configs" / "segmentation" / "tiny.yaml"


def tiny_cfg(tmp: Path, *sets: str) -> Any:
    from clinrisk.config import load_config

    return load_config(TINY, [f"run.output_dir={tmp}", *sets])


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    """(config, metrics, checkpoint) of one tracked tiny training run."""
    pytest.importorskip("jax")
    from clinrisk.usecases.segmentation.run import CHECKPOINT, run_dir, train_run

    tmp = tmp_path_factory.mktemp("seg-train")
    cfg = tiny_cfg(tmp)
    metrics = train_run(cfg)
    return cfg, metrics, run_dir(cfg) / CHECKPOINT
