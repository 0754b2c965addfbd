"""The whole DAG through kfp.local on a tiny config: every task runs and every artifact is valid."""

from __future__ import annotations

from pathlib import Path

import components as c
import polars as pl
import pytest
from kfp import dsl

from clinrisk.bundle import load_bundle
from clinrisk.config import load_config, save_config
from clinrisk.errors import StageError
from clinrisk.io import list_shards, read_json
from clinrisk.pipeline_runner import run_local
from clinrisk.stages.catalog import FUSED_MODEL_TASK, Catalog

REPO = Path(__file__).resolve().parents[2]
# 3,000 patients at the default block size (1,000) make 3 blocks: the plan clamps generate.n_shards=8 to 3
# shards, and the DAG must fan out exactly those 3 (it used to fan out 8, and shards 3-7 failed).
TINY = [
    "generate.n_patients=3000",
    "generate.n_shards=8",
    "generate.block_size=1000",  # the default (configs/tiny.yaml sets 250)
    "select.rounds=2",
    "select.probe_rounds_boost=20",
    "train.num_boost_round=60",
    "evaluate.bootstrap_replicates=10",
]
TASKS = [
    "resolve-config", "start-tracking", "plan-generation", "merge-data", "fit-feature-spec",
    "merge-features",
]  # fmt: skip
MODEL_STEPS = ["select-features", "train", "evaluate", "register"]  # one task locally: FUSED_MODEL_TASK


@pytest.fixture(scope="module")
def task_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TMPDIR the run inherits: what the tasks leave there outlives the run."""
    return tmp_path_factory.mktemp("tmpdir")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, task_tmpdir: Path):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(task_tmpdir))
        return run_local(REPO / "configs" / "tiny.yaml", [f"run.output_dir={out}", *TINY])


def test_every_task_ran_and_artifacts_are_valid(tiny_run) -> None:  # type: ignore[no-untyped-def]
    d = tiny_run.pipeline_dir
    for task in [*TASKS, FUSED_MODEL_TASK]:
        assert (d / task).is_dir(), task
    # the local runner's default (pipeline.fuse_local_steps): generate + validate is one task per shard
    # group, the model half one task
    assert not [step for step in MODEL_STEPS if (d / step).exists()]
    assert len(list(d.glob("for-loop-2-iteration-*/generate-validate-shard"))) == 2
    assert not list(d.glob("for-loop-2-iteration-*/generate-shard"))
    io = Catalog.for_kfp_run(d)
    plan = read_json(d / "plan-generation" / "plan" / "plan.json")
    assert plan["n_blocks"] == 3 and plan["n_shards"] == 3
    # The local runner groups the 3 shards into at most run.workers (2) tasks per fan-out: the plan owns
    # that fan-out too, and every shard is produced exactly once (merge-data rejects a shard made twice).
    groups = read_json(d / "plan-generation" / "plan" / "task_groups.json")["groups"]
    assert groups == [[0, 1], [2]]
    for loop in ("for-loop-2", "for-loop-3"):  # group 1 is the exit handler around the DAG
        assert len(list(d.glob(f"{loop}-iteration-*"))) == 2
    manifest = read_json(d / "merge-data" / "raw" / "manifest.json")
    assert manifest["patients"] > 0
    assert len(list_shards(d / "merge-data" / "raw" / "observed")) == 3
    report = read_json(d / "merge-data" / "validated" / "validation" / "report.json")
    assert report["rows_in"] == report["rows_valid"] + report["rows_quarantined"]
    feats = list_shards(d / "merge-features" / "features")
    assert len(feats) == 3
    spec = read_json(d / "merge-features" / "features" / "feature_spec.json")
    df = pl.read_parquet(feats[0])
    assert set(spec["feature_names"]) <= set(df.columns)
    selected = read_json(io.path("selection_file"))
    assert selected["selected"]
    bundle = load_bundle(io.path("model_bundle"))
    assert set(bundle.feature_names) <= set(spec["feature_names"])
    metrics = read_json(io.path("evaluation") / "metrics.json")
    assert metrics
    assert (d / FUSED_MODEL_TASK / "report").read_text().startswith("#")
    assert tiny_run.model_uri == "models:/clinrisk/1"
    assert (tiny_run.run_root / "latest").resolve() == d


def test_one_task_per_model_step_gives_the_same_model_and_metrics(tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The fused tasks call the same step functions as the per-step DAG a cluster runs: with them off,
    the run has a task per step and makes the same data, model bytes and test metrics."""
    per_step = run_local(
        REPO / "configs" / "tiny.yaml",
        [f"run.output_dir={tmp_path}", *TINY, "pipeline.fuse_local_steps=false"],
    )
    d = per_step.pipeline_dir
    for task in [*TASKS, *MODEL_STEPS]:
        assert (d / task).is_dir(), task
    assert not (d / FUSED_MODEL_TASK).exists()
    for step in ("generate-shard", "validate-shard"):
        assert len(list(d.glob(f"for-loop-2-iteration-*/{step}"))) == 2, step
    fused, split = Catalog.for_kfp_run(tiny_run.pipeline_dir), Catalog.for_kfp_run(d)
    split_raw, fused_raw = (read_json(io.path("raw_manifest")) for io in (split, fused))
    assert (
        split_raw["observed_hash"] == fused_raw["observed_hash"]
        and split_raw["truth_hash"] == fused_raw["truth_hash"]
    )
    split_report, fused_report = (read_json(io.path("validation") / "report.json") for io in (split, fused))
    assert split_report["rows_quarantined"] == fused_report["rows_quarantined"]
    assert split_report["rows_valid"] == fused_report["rows_valid"] > 0
    assert split.path("model_bundle") == d / "train" / "bundle"
    # (the selection document also records its input folder and its own wall time and memory)
    assert (
        read_json(split.path("selection_file"))["selected"]
        == read_json(fused.path("selection_file"))["selected"]
    )
    assert split.path("predictions").read_bytes() == fused.path("predictions").read_bytes()
    assert (split.path("model_bundle") / "model.txt").read_bytes() == (
        fused.path("model_bundle") / "model.txt"
    ).read_bytes()
    split_metrics, fused_metrics = (
        read_json(io.path("evaluation") / "metrics.json") for io in (split, fused)
    )
    assert split_metrics.pop("bundle_dir") != fused_metrics.pop("bundle_dir")  # where each run put its bundle
    assert split_metrics == fused_metrics
    assert per_step.model_uri == "models:/clinrisk/1"  # its own run root: its own registry


def test_tasks_leave_nothing_in_the_temp_folder(tiny_run, task_tmpdir: Path) -> None:  # type: ignore[no-untyped-def]
    # every KFP lightweight component runs `mktemp -d` for its source file and never removes it; the runner
    # gives the tasks a TMPDIR of their own and removes it at the end of the run
    assert tiny_run.pipeline_dir.is_dir()
    assert sorted(p.name for p in task_tmpdir.iterdir()) == []


def test_same_config_same_data_hash(tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from clinrisk.generate import generate_dataset

    cfg = load_config(REPO / "configs" / "tiny.yaml", TINY)
    again = generate_dataset(cfg, tmp_path / "raw", workers=1, progress=False)
    first = read_json(tiny_run.pipeline_dir / "merge-data" / "raw" / "manifest.json")
    key = next(k for k in ("content_hash", "observed_hash", "data_hash") if k in first)
    assert again[key] == first[key]


def test_failed_step_stops_run_and_publishes_nothing(tmp_path: Path) -> None:
    # No quarantine tolerated + a calendar check that every row fails → merge-data must fail.
    with pytest.raises(StageError):
        run_local(
            REPO / "configs" / "tiny.yaml",
            [
                f"run.output_dir={tmp_path}",
                *TINY,
                "validate.max_quarantine_fraction=0.0",
                "generate.unit_wrong_label_rate=0.2",
            ],
        )
    run_dir = next(tmp_path.glob("tiny/runs/*/clinrisk-training-*"))
    assert not (run_dir / "merge-data" / "validated").exists()
    assert not (run_dir / "fit-feature-spec").exists()
    assert not (run_dir / "train").exists() and not (run_dir / FUSED_MODEL_TASK).exists()


def test_component_called_directly(tmp_path: Path) -> None:
    cfg_dir = tmp_path / "config"
    c.resolve_config.python_func(
        config_yaml=(REPO / "configs" / "tiny.yaml").read_text(),
        overrides=["generate.n_shards=3", "generate.alpha=-6.0"],
        config=dsl.Artifact(uri=str(cfg_dir)),
    )
    assert load_config(cfg_dir / "config.yaml").generate.n_shards == 3
    shards = c.plan_generation.python_func(
        config=dsl.Artifact(uri=str(cfg_dir)), plan=dsl.Artifact(uri=str(tmp_path / "plan"))
    )
    assert shards == [0, 1, 2]
    save_config(load_config(cfg_dir / "config.yaml"), tmp_path / "copy.yaml")
