"""Shared fixtures: the tiny config (seconds) and one trained tiny checkpoint per session.

XLA compilation dominates these tests (a tiny UNet trains in about a second once compiled). JAX's persistent
compilation cache, in one temporary folder per test session, lets every process of the session reuse what
another compiled: this process, the CLI subprocesses and the pipeline's task processes. It is set here,
before any test module imports jax, through JAX's own environment variables (inherited by subprocesses).
A cached executable is the same program, so results are unchanged (the determinism tests still hold).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "configs" / "segmentation" / "tiny.yaml"

JAX_CACHE_ENV = {
    "JAX_COMPILATION_CACHE_DIR": tempfile.mkdtemp(prefix="clinrisk-seg-xla-"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
for _key, _value in JAX_CACHE_ENV.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session", autouse=True)
def shared_xla_cache() -> Iterator[None]:
    """Point an already-imported jax at the session's cache too; remove the folder at the end."""
    if "jax" in sys.modules:
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    shutil.rmtree(JAX_CACHE_ENV["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


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
