"""The segmentation images' Dockerfiles (no Docker needed): the JAX layer sits below the clinrisk wheel, and the
layers below it are the shared images' own text, so Docker's cache shares them and a code change rebuilds only
the wheel layer (not the JAX install)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

IMAGES = Path(__file__).resolve().parents[3] / "images"
PAIRS = [
    ("segmentation.Dockerfile", "pipeline.Dockerfile"),
    ("segmentation-serving.Dockerfile", "serving.Dockerfile"),
]


def _instructions(path: Path) -> list[str]:
    """Dockerfile instructions with their continuation lines joined (comments and blank lines dropped)."""
    out: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            out.append(re.sub(r"\s+", " ", pending).strip())
            pending = ""
    return out


def _stage(instructions: list[str], start: str) -> list[str]:
    i = instructions.index(start)
    end = next((j for j in range(i + 1, len(instructions)) if instructions[j].startswith("FROM ")), None)
    return instructions[i:end]


@pytest.mark.parametrize(("image", "shared"), PAIRS)
def test_the_jax_layer_comes_before_the_wheel_and_shares_the_base_layers(image: str, shared: str) -> None:
    ours, theirs = _instructions(IMAGES / image), _instructions(IMAGES / shared)
    deps = "FROM ${BASE_IMAGE} AS deps"
    assert _stage(ours, deps) == _stage(theirs, deps)  # identical text: one cached deps stage for both images
    jax = _stage(ours, "FROM ${BASE_IMAGE} AS jax")
    assert not any("clinrisk" in step for step in jax)  # the JAX stage depends on the lock only
    final, base_final = _stage(ours, "FROM ${BASE_IMAGE}"), _stage(theirs, "FROM ${BASE_IMAGE}")
    wheel = "COPY wheels/clinrisk/ /wheels/clinrisk/"
    upto = base_final[: base_final.index(wheel)]
    assert final[: len(upto)] == upto  # the runtime layers below the wheel are the shared image's
    assert final[len(upto)].startswith("COPY --from=jax /opt/jax-site/ ")
    assert final[len(upto) + 1] == wheel  # JAX below the wheel: a code change re-runs only the wheel layer
    env = next(step for step in base_final if step.startswith("ENV PATH="))
    assert next(step for step in final if step.startswith("ENV PATH=")).startswith(env)
    assert "PIPELINE_IMAGE" not in " ".join(ours) and "SERVING_IMAGE" not in " ".join(ours)
