"""Kubeflow settings of the training pipeline: CPU and memory per step (compile-time, the pods' resources)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from clinrisk.config.base import Section

# Kubernetes quantities as KFP accepts them: CPU in cores ("2", "0.5") or millicores ("500m"); memory in
# bytes with an optional decimal or binary suffix ("512Mi", "4G").
_CPU = re.compile(r"^(?P<n>[0-9]+(\.[0-9]+)?)(?P<m>m?)$")
_MEMORY = re.compile(r"^(?P<n>[0-9]+(\.[0-9]+)?)(?P<unit>Ki|Mi|Gi|Ti|K|M|G|T)?$")
_MEMORY_UNITS = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_MEMORY_UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def cpu_cores(text: str) -> float:
    """``"500m"`` -> 0.5, ``"2"`` -> 2.0; ValueError for anything else."""
    m = _CPU.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a CPU quantity (e.g. 500m, 1, 2.5)")
    n = float(m["n"])
    return n / 1000 if m["m"] else n


def memory_bytes(text: str) -> int:
    """``"512Mi"`` -> 536870912; ValueError for anything else."""
    m = _MEMORY.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a memory quantity (e.g. 512Mi, 4Gi, 2G)")
    return int(float(m["n"]) * _MEMORY_UNITS[m["unit"]])


class StepResources(Section):
    """Requests and limits of one step's pod. A limit left out equals its request."""

    cpu: str = Field("500m", description="CPU request (cores or millicores)")
    memory: str = Field("1Gi", description="memory request")
    cpu_limit: str | None = Field(None, description="CPU limit (default: the request)")
    memory_limit: str | None = Field(None, description="memory limit (default: the request)")

    @field_validator("cpu", "cpu_limit", "memory", "memory_limit", mode="before")
    @classmethod
    def _number_as_text(cls, v: Any) -> Any:
        """``cpu: 2`` in YAML (or ``--set ...cpu=2``) is a number; a quantity is its text."""
        if isinstance(v, int | float) and not isinstance(v, bool):
            return format(v, "g")
        return v

    @field_validator("cpu", "cpu_limit")
    @classmethod
    def _cpu(cls, v: str | None) -> str | None:
        if v is not None and cpu_cores(v) <= 0:
            raise ValueError(f"{v!r} must be more than 0")
        return v

    @field_validator("memory", "memory_limit")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None and memory_bytes(v) <= 0:
            raise ValueError(f"{v!r} must be more than 0")
        return v

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> StepResources:
        if self.cpu_limit is not None and cpu_cores(self.cpu_limit) < cpu_cores(self.cpu):
            raise ValueError(f"cpu_limit {self.cpu_limit} is below the request {self.cpu}")
        if self.memory_limit is not None and memory_bytes(self.memory_limit) < memory_bytes(self.memory):
            raise ValueError(f"memory_limit {self.memory_limit} is below the request {self.memory}")
        return self

    def limits(self) -> tuple[str, str]:
        """(cpu limit, memory limit), a missing limit being the request."""
        return self.cpu_limit or self.cpu, self.memory_limit or self.memory


# One entry per pipeline step (the component's name). The per-shard and merge steps hold one shard or the
# whole dataset in memory; train and evaluate hold the feature table plus LightGBM's copies.
STEP_DEFAULTS: dict[str, dict[str, str]] = {
    "resolve_config": {"cpu": "100m", "memory": "256Mi"},
    "start_tracking": {"cpu": "100m", "memory": "512Mi"},
    "plan_generation": {"cpu": "500m", "memory": "1Gi"},
    "generate_shard": {"cpu": "1", "memory": "2Gi"},
    "validate_shard": {"cpu": "1", "memory": "2Gi"},
    "merge_data": {"cpu": "1", "memory": "2Gi"},
    "fit_feature_spec": {"cpu": "500m", "memory": "2Gi"},
    "build_features_shard": {"cpu": "1", "memory": "2Gi"},
    "merge_features": {"cpu": "1", "memory": "2Gi"},
    "select_features": {"cpu": "2", "memory": "4Gi"},
    "train": {"cpu": "2", "memory": "4Gi"},
    "evaluate": {"cpu": "2", "memory": "4Gi"},  # evaluate.workers (0 = run.workers) bootstrap processes
    "register": {"cpu": "500m", "memory": "1Gi"},
    "deploy_canary": {"cpu": "100m", "memory": "256Mi"},
    "finalize_tracking": {"cpu": "100m", "memory": "512Mi"},
}


class PipelineConfig(Section):
    """Settings of the compiled Kubeflow pipeline (they change the pods, not the results)."""

    resources: dict[str, StepResources] = Field(
        default_factory=lambda: {k: StepResources.model_validate(v) for k, v in STEP_DEFAULTS.items()},
        description="CPU/memory requests and limits per step (pipeline.resources.<step>.{cpu,memory,...})",
    )

    fuse_local_steps: bool = Field(
        True,
        description=(
            "the local runner (kfp.local, a fresh Python process per task) runs generate + validate as one "
            "task per shard group, and select, train, evaluate and register as one task: their imports and "
            "start-up are paid once (≈ 10 s of a 2M run); false keeps one task per step, as a compiled "
            "pipeline always does"
        ),
    )

    @field_validator("resources", mode="before")
    @classmethod
    def _per_step_defaults(cls, value: Any) -> Any:
        """A step the config names keeps the defaults of the keys it leaves out; unknown steps are errors."""
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(STEP_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown step(s) {unknown}; steps: {', '.join(STEP_DEFAULTS)}")
        merged: dict[str, Any] = {}
        for step, defaults in STEP_DEFAULTS.items():
            given = value.get(step)
            if isinstance(given, StepResources):
                given = given.model_dump(exclude_unset=True)
            merged[step] = {**defaults, **given} if isinstance(given, dict) else (given or defaults)
        return merged
