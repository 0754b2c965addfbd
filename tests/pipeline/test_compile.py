"""The compiled pipeline IR loads back with the KFP SDK and runs every task in the pipeline image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kfp import components

from clinrisk.dask_k8s import CLIENT_LABEL
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
    "finalize-tracking",
}


def _load(path: Path) -> dict[str, Any]:
    """The compiled pipeline spec: the file's first document (the second is the Kubernetes platform spec)."""
    return next(yaml.safe_load_all(path.read_text()))


def _k8s_executors(path: Path) -> dict[str, Any]:
    """Executor -> its Kubernetes platform config (kfp-kubernetes; the file's second document, if any)."""
    _, *platform = yaml.safe_load_all(path.read_text())
    return {
        name: spec
        for doc in platform
        for name, spec in doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items()
    }


def test_compiled_ir_loads_back_and_uses_pipeline_image(tmp_path: Path) -> None:
    out = compile_pipeline(tmp_path / "p.yaml", parallelism=3)
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "clinrisk-training"
    ir = _load(out)
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
    ir = _load(compile_pipeline(tmp_path / "p.yaml"))
    caching = _caching(ir)
    assert {t for t, on in caching.items() if not on} >= {"start-tracking", "register", "deploy-canary"}
    for deterministic in ("generate-shard", "validate-shard", "build-features-shard", "train", "evaluate"):
        assert caching[deterministic], deterministic


def _dag_tasks(ir: dict[str, object]) -> dict[str, dict[str, object]]:
    """Every task of the root DAG and of every sub-DAG (loops, conditions, exit handler), by task name."""
    out: dict[str, dict[str, object]] = {}
    for comp in [ir["root"], *ir["components"].values()]:  # type: ignore[union-attr]
        out.update((comp.get("dag") or {}).get("tasks") or {})  # type: ignore[union-attr]
    return out


def test_every_task_loop_and_condition_has_a_display_name(tmp_path: Path) -> None:
    from pipelines.training import DISPLAY_NAMES, GROUP_NAMES

    ir = _load(compile_pipeline(tmp_path / "p.yaml"))
    tasks = _dag_tasks(ir)
    shown = {name: t["taskInfo"]["name"] for name, t in tasks.items()}
    for name, label in shown.items():
        assert label != name and not label.startswith(("for-loop-", "condition-", "exit-handler-")), name
    # the local runner's fused tasks (pipeline.fuse_local_steps)
    local_only = {DISPLAY_NAMES["select_train_evaluate_register"], DISPLAY_NAMES["generate_validate_shard"]}
    assert set(shown.values()) == (set(DISPLAY_NAMES.values()) - local_only) | set(GROUP_NAMES.values())
    groups = {n for n in tasks if n.startswith(("for-loop-", "condition-", "exit-handler-"))}
    assert len(groups) == 4  # 2 loops, the deploy condition, the exit handler


def test_the_local_shape_has_one_model_task(tmp_path: Path) -> None:
    """pipeline.fuse_local_steps: the same DAG with generate → validate as one task per shard (group),
    and select → register as one task that takes the per-step tasks' inputs, is never cached (it
    registers) and feeds the deploy condition."""
    from kfp import compiler
    from pipelines.training import DISPLAY_NAMES, build_training_pipeline

    out = tmp_path / "local.yaml"
    compiler.Compiler().compile(build_training_pipeline(fuse_steps=True), str(out))
    ir = _load(out)
    tasks = _dag_tasks(ir)
    assert not {"generate-shard", "validate-shard", "select-features", "train", "evaluate", "register"} & set(
        tasks
    )
    shard_task = tasks["generate-validate-shard"]
    assert shard_task["cachingOptions"] == {"enableCache": True}  # deterministic: resumable from the cache
    merge_inputs = str(tasks["merge-data"]["inputs"])
    assert merge_inputs.count("generate-validate-shard") == 2  # raw and validated shards, collected
    fused = tasks["select-train-evaluate-register"]
    assert fused["taskInfo"]["name"] == DISPLAY_NAMES["select_train_evaluate_register"]
    assert fused["cachingOptions"] == {}  # caching off (KFP writes enableCache only when on)
    assert set(fused["inputs"]["artifacts"]) == {
        "config",
        "features",
        "raw",
        "validation_report",
        "validated",
    }
    assert "select-train-evaluate-register" in str(tasks["deploy-canary"]["inputs"])


def test_resources_come_from_config(tmp_path: Path) -> None:
    from clinrisk.config import load_config
    from clinrisk.config.pipeline import STEP_DEFAULTS

    cfg = load_config(None, ["pipeline.resources.train.memory=6Gi", "pipeline.resources.train.cpu_limit=3"])
    ir = _load(compile_pipeline(tmp_path / "p.yaml", cfg=cfg))
    executors = ir["deploymentSpec"]["executors"]
    by_step = {k.removeprefix("exec-"): e["container"]["resources"] for k, e in executors.items()}
    assert set(by_step) == {s.replace("_", "-") for s in STEP_DEFAULTS}
    train = by_step["train"]
    assert train["resourceMemoryRequest"] == "6Gi" and train["resourceMemoryLimit"] == "6Gi"
    assert train["resourceCpuRequest"] == "2" and train["resourceCpuLimit"] == "3"
    merge = by_step["merge-data"]
    assert merge["resourceCpuRequest"] == STEP_DEFAULTS["merge_data"]["cpu"]
    assert merge["resourceMemoryLimit"] == STEP_DEFAULTS["merge_data"]["memory"]


def test_ui_parameters_have_defaults_so_a_form_needs_none(tmp_path: Path) -> None:
    ir = _load(compile_pipeline(tmp_path / "p.yaml"))
    params = ir["root"]["inputDefinitions"]["parameters"]
    assert {"usecase", "config_name", "n_patients", "seed", "run_name", "overrides", "config_yaml"} <= set(
        params
    )
    assert all(p.get("isOptional") for p in params.values())
    assert params["usecase"]["defaultValue"] == "clinical"
    assert params["config_name"]["defaultValue"] == "default"


DATA_HALF = (
    "resolve-config",
    "start-tracking",
    "plan-generation",
    "generate-shard",
    "validate-shard",
    "merge-data",
)


def test_both_pipelines_share_one_data_half(tmp_path: Path) -> None:
    """pipelines.data_half adds the same tasks, with the same inputs, caching and resources, to the training
    and the segmentation DAG (flat: no nested pipeline component); only the model half differs."""
    from kfp import compiler
    from pipelines.segmentation import build_pipeline
    from pipelines.training import build_training_pipeline

    irs = []
    for name, build in (("training", build_training_pipeline), ("segmentation", build_pipeline)):
        out = tmp_path / f"{name}.yaml"
        compiler.Compiler().compile(build(2), str(out))
        irs.append(_load(out))
    training, segmentation = (_dag_tasks(ir) for ir in irs)

    def data_half(tasks: dict[str, dict[str, object]]) -> dict[str, object]:
        return {n: {k: v for k, v in tasks[n].items() if k != "taskInfo"} for n in DATA_HALF}

    assert data_half(training) == data_half(segmentation)
    assert "finalize-tracking" in training and "finalize-tracking" in segmentation
    for ir in irs:
        executors = ir["deploymentSpec"]["executors"]
        for task in DATA_HALF:
            assert f"exec-{task}" in executors, task  # each a plain container task, not a sub-pipeline
    assert {"fit-feature-spec", "select-features"} <= set(training)
    assert not {"fit-feature-spec", "select-features"} & set(segmentation)


def test_only_the_train_pod_carries_the_dask_client_label(tmp_path: Path) -> None:
    """train.engine=dask with train.dask.cluster=kubernetes: the train pod reaches its DaskCluster's pods
    through manifests/dask/networkpolicy.yaml, which admits pods with this label (set through kfp-kubernetes,
    always: the engine is a run-time config value). No other step's pod gets it."""
    out = compile_pipeline(tmp_path / "p.yaml")
    labelled = {
        name: spec["podMetadata"]["labels"]
        for name, spec in _k8s_executors(out).items()
        if (spec.get("podMetadata") or {}).get("labels")
    }
    assert labelled == {"exec-train": dict([CLIENT_LABEL])}
    assert "exec-train" in _load(out)["deploymentSpec"]["executors"]
