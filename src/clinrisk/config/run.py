"""Run-level settings: where outputs go and the master seed."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from clinrisk.config.base import SAFE_NAME, Section


class RunConfig(Section):
    """Where a run writes, and the master seed every stage derives its randomness from."""

    usecase: str = Field(
        "clinical",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="the use case (clinrisk.usecases): its data, schema, features, labels and serving contract",
    )
    name: str = Field(
        "default",
        pattern=SAFE_NAME,
        max_length=128,
        description="run name: one folder under output_dir (no '/', not '.' or '..'), also used in MLflow",
    )
    output_dir: Path = Field(Path("outputs"), description="root of all run outputs (data, bundle, mlruns)")
    seed: int = Field(20261123, ge=0, le=2**63 - 1)
    workers: int = Field(2, ge=1, le=256, description="worker processes for per-shard stages")
