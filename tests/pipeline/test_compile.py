"""The compiled pipeline IR loads back with the KFP SDK and runs every task in the pipeline image."""

from __future__ import annotations

from pathlib import Path

import yaml
from kfp import components

from clinrisk.images import pipeline_image
from clinrisk.pipeline_runner import compile_pipeline

EXPECTED_TASKS = {
    "resolve-config",
    "start-tracking",
    "plan-generation",
    "generate-shard",
    "validate-shard",
    "merge-data",
    "fit-feature-spec",
    "build-features-shard",
    "merge-features",
    "select-features",
    "train",
    "evaluate",
    "register",
    "deploy-canary",
}


def test_compiled_ir_loads_back_and_uses_pipeline_image(tmp_path: Path) -> None:
    out = compile_pipeline(tmp_path / "p.yaml", parallelism=3)
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "clinrisk-training"
    ir = yaml.safe_load(out.read_text())
    executors = ir["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {pipeline_image()}
    assert not pipeline_image().endswith(":latest")
    names = {k.removeprefix("comp-") for k in ir["components"]}
    for task in EXPECTED_TASKS:
        assert any(n == task or n.startswith(f"{task}-") for n in names), task
    text = out.read_text()
    assert "parallelismLimit: 3" in text
    # Executors must not pip-install kfp at pod start (air-gapped clusters): the image already has it.
    assert "pip install" not in text


def test_compile_is_deterministic(tmp_path: Path) -> None:
    a = compile_pipeline(tmp_path / "a.yaml").read_text()
    b = compile_pipeline(tmp_path / "b.yaml").read_text()
    assert a == b


def _caching(spec: dict[str, object]) -> dict[str, bool]:
    """Task name -> enableCache for every task, descending into ParallelFor/If sub-DAGs."""
    out: dict[str, bool] = {}
    for comp in [spec["root"], *spec["components"].values()]:  # type: ignore[index,union-attr]
        for name, task in ((comp.get("dag") or {}).get("tasks") or {}).items():  # type: ignore[union-attr]
            if "componentRef" in task and "executorLabel" not in task:
                out[name] = bool((task.get("cachingOptions") or {}).get("enableCache", False))
    return out


def test_side_effecting_steps_are_never_cached(tmp_path: Path) -> None:
    ir = yaml.safe_load(compile_pipeline(tmp_path / "p.yaml").read_text())
    caching = _caching(ir)
    assert {t for t, on in caching.items() if not on} >= {"start-tracking", "register", "deploy-canary"}
    for deterministic in ("generate-shard", "validate-shard", "build-features-shard", "train", "evaluate"):
        assert caching[deterministic], deterministic
