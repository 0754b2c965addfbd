"""Fewer, larger local tasks: the plan groups the shards into at most N fan-out tasks, each runs its
group's shards one after another in one process, and the merged datasets and the model are byte for byte
those of the one-task-per-shard DAG (the steps called directly, as the KFP components call them)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clinrisk import steps
from clinrisk.config import load_config, save_config
from clinrisk.errors import DataError
from clinrisk.stages.shards import GROUP_PARTS_FILE, TASK_GROUPS_FILE, expand_parts, group_shards

REPO = Path(__file__).resolve().parents[2]
# 500 patients in blocks of 100: 5 shards, so 2 task groups are uneven ([0, 1, 2] and [3, 4]).
SETS = [
    "generate.n_patients=500",
    "generate.block_size=100",
    "generate.n_shards=5",
    "generate.alpha=-4.6",
    "select.rounds=2",
    "train.num_boost_round=20",
    "tracking.enabled=false",
    "run.workers=1",
]


def _config_dir(where: Path, output_dir: Path | None = None) -> Path:
    """The config artefact; ``output_dir`` (default: beside it) is part of config.yaml's bytes."""
    out = output_dir if output_dir is not None else where.parent
    cfg = load_config(REPO / "configs/clinical/tiny.yaml", [*SETS, f"run.output_dir={out}"])
    where.mkdir(parents=True, exist_ok=True)
    save_config(cfg, where / steps.CONFIG_FILE)
    return where


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dag(work: Path, task_groups: int) -> dict[str, Path]:
    """The DAG's data, feature and train steps in order, fanned out as the plan says (both runs share one
    run.output_dir, so their config.yaml bytes are the same)."""
    c = _config_dir(work / "config", work.parent)
    tasks = steps.plan_generation_step(c, work / "plan", task_groups)
    gen = [work / f"gen{t}" for t in tasks]
    val = [work / f"val{t}" for t in tasks]
    for t in tasks:
        steps.generate_shard_step(c, work / "plan", t, gen[t])
        steps.validate_shard_step(c, gen[t], t, val[t])
    raw, valid = work / "raw", work / "validated"
    steps.merge_data_step(c, work / "plan", gen, val, raw, valid, work / "report.md")
    steps.fit_feature_spec_step(c, valid, work / "spec")
    feats = [work / f"feat{t}" for t in tasks]
    for t in tasks:
        steps.build_features_shard_step(c, work / "spec", valid, raw, t, feats[t], work / "plan")
    steps.merge_features_step(c, work / "spec", feats, work / "features")
    steps.select_features_step(c, work / "features", work / "selection")
    steps.train_step(c, work / "features", work / "selection", "", work / "bundle", raw_dir=raw)
    return {"raw": raw, "validated": valid, "features": work / "features", "bundle": work / "bundle"}


def _without_paths(files: dict[str, bytes]) -> dict[str, bytes]:
    """The validation report files with every absolute file path replaced by a placeholder."""
    path = re.compile(rb"/[^\s\"'`)]*?(manifest\.json|part\.parquet)")
    return {k: path.sub(b"<path>", v) if k.startswith("validation/") else v for k, v in files.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    where = tmp_path_factory.mktemp("groups")
    return {"per_shard": _dag(where / "per-shard", 0), "grouped": _dag(where / "grouped", 2)}


def test_the_plan_groups_the_shards_into_at_most_n_tasks(runs: dict[str, dict[str, Path]]) -> None:
    grouped = runs["grouped"]["raw"].parent
    assert json.loads((grouped / "plan" / TASK_GROUPS_FILE).read_text()) == {"groups": [[0, 1, 2], [3, 4]]}
    assert not (runs["per_shard"]["raw"].parent / "plan" / TASK_GROUPS_FILE).exists()
    # two task folders, each holding its shards' usual outputs, every shard produced exactly once
    listings = [json.loads((grouped / f"gen{t}" / GROUP_PARTS_FILE).read_text()) for t in (0, 1)]
    assert [x["shards"] for x in listings] == [[0, 1, 2], [3, 4]]
    assert not (grouped / "gen2").exists()
    produced = sorted(p.name for p in grouped.glob("gen*/part-*/observed/shard=*"))
    assert produced == [f"shard={s:03d}" for s in range(5)]


@pytest.mark.parametrize("dataset", ["raw", "validated", "features"])
def test_grouped_tasks_write_the_same_datasets(runs: dict[str, dict[str, Path]], dataset: str) -> None:
    """raw (shards, truth, manifest), validated (+ quarantine and the report) and features: identical."""
    one, grouped = _files(runs["per_shard"][dataset]), _files(runs["grouped"][dataset])
    assert one.keys() == grouped.keys() and len(one) >= 5
    if dataset == "validated":  # the report names where each task's files were (task folders differ)
        one, grouped = _without_paths(one), _without_paths(grouped)
    assert [k for k in one if one[k] != grouped[k]] == []


def test_grouped_tasks_train_the_same_model(runs: dict[str, dict[str, Path]]) -> None:
    one, grouped = runs["per_shard"]["bundle"], runs["grouped"]["bundle"]
    for name in ("model.txt", "calibration.json", "threshold.json", "reference_stats.json"):
        assert (one / name).read_bytes() == (grouped / name).read_bytes(), name
    meta = [json.loads((b / "metadata.json").read_text()) for b in (one, grouped)]
    for m in meta:  # the wall-clock stamp, and the hashes that cover metadata.json (and so the stamp)
        del m["created_utc"], m["bundle_version"]
        m["file_sha256"].pop("metadata.json", None)
    assert meta[0] == meta[1]


def test_a_failure_mid_group_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second shard of a group is interrupted: the task's output does not exist and no temporary folder
    is left beside it (the group is published whole or not at all)."""
    c = _config_dir(tmp_path / "config")
    assert steps.plan_generation_step(c, tmp_path / "plan", 2) == [0, 1]
    real: Callable[..., Any] = steps._generate_one
    seen: list[int] = []

    def stop_on_second(config_dir: Path, plan_dir: Path, shard: int, out_dir: Path) -> None:
        seen.append(shard)
        if len(seen) == 2:
            raise KeyboardInterrupt  # what SIGTERM becomes in a task (Python's default: the process dies)
        real(config_dir, plan_dir, shard, out_dir)

    monkeypatch.setattr(steps, "_generate_one", stop_on_second)
    with pytest.raises(KeyboardInterrupt):
        steps.generate_shard_step(c, tmp_path / "plan", 0, tmp_path / "gen0")
    assert seen == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config", "plan"]


def test_group_shards_is_contiguous_and_even() -> None:
    assert group_shards(list(range(5)), 0) == [[0], [1], [2], [3], [4]]
    assert group_shards(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert group_shards(list(range(3)), 8) == [[0], [1], [2]]
    groups = group_shards(list(range(80)), 3)
    assert [len(g) for g in groups] == [27, 27, 26]
    assert [s for g in groups for s in g] == list(range(80))


@pytest.mark.parametrize("bad", [-1, True, 1.5, "2"])
def test_bad_task_group_counts_are_one_line_errors(bad: Any) -> None:
    with pytest.raises(DataError, match=r"^task_groups: must be an integer >= 0"):
        group_shards([0, 1], bad)


def test_a_task_index_outside_the_groups_is_an_error(tmp_path: Path) -> None:
    c = _config_dir(tmp_path / "config")
    steps.plan_generation_step(c, tmp_path / "plan", 2)
    with pytest.raises(DataError, match=r"task group 2: the plan has task groups 0\.\.1"):
        steps.generate_shard_step(c, tmp_path / "plan", 2, tmp_path / "gen2")
    assert not (tmp_path / "gen2").exists()


def test_expand_parts_keeps_ungrouped_parts(tmp_path: Path) -> None:
    (tmp_path / "g" / "part-001").mkdir(parents=True)
    (tmp_path / "g" / GROUP_PARTS_FILE).write_text(json.dumps({"shards": [1], "parts": ["part-001"]}))
    (tmp_path / "one").mkdir()
    assert expand_parts([tmp_path / "one", tmp_path / "g"]) == [tmp_path / "one", tmp_path / "g" / "part-001"]


def _plan_task_groups(ir: dict[str, Any]) -> int:
    """The task_groups constant the compiled DAG passes to plan-generation."""
    for comp in [ir["root"], *ir["components"].values()]:
        task = ((comp.get("dag") or {}).get("tasks") or {}).get("plan-generation")
        if task is not None:
            return int(task["inputs"]["parameters"]["task_groups"]["runtimeValue"]["constant"])
    raise AssertionError("no plan-generation task in the compiled DAG")


def test_a_compiled_pipeline_keeps_one_task_per_shard(tmp_path: Path) -> None:
    """On a cluster every shard gets its own pod (maximum parallelism) unless the pipeline is built with
    task groups."""
    import yaml
    from kfp import compiler
    from pipelines.training import build_training_pipeline

    from clinrisk.pipeline_runner import compile_pipeline

    # the pipeline spec: the first document (the second is the Kubernetes platform spec)
    ir = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", parallelism=3).read_text()))
    assert _plan_task_groups(ir) == 0
    compiler.Compiler().compile(build_training_pipeline(3, task_groups=4), str(tmp_path / "g.yaml"))
    assert _plan_task_groups(next(yaml.safe_load_all((tmp_path / "g.yaml").read_text()))) == 4
