"""The stage catalog: one layout by logical name, its KFP binding checked against the compiled DAG, and the
CLI and the KFP step of a stage calling the same ``run`` with the same result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinrisk.errors import ConfigError
from clinrisk.stages.catalog import KFP_OUTPUTS, RUN_LAYOUT, Catalog, flat_numeric


def test_run_layout_and_overrides(tmp_path: Path) -> None:
    io = Catalog.for_run(tmp_path, features=tmp_path / "elsewhere", selection=None)
    assert io.path("features") == tmp_path / "elsewhere"
    assert io.path("selection") == tmp_path / "selection"  # None keeps the layout's entry
    assert io.path("model_bundle") == tmp_path / "bundle"
    assert set(RUN_LAYOUT) <= set(io.paths)
    assert io.existing("evaluation") is None
    (tmp_path / "evaluation").mkdir()
    assert io.existing("evaluation") == tmp_path / "evaluation"


def test_unknown_artefact_is_a_config_error_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"catalog: no artefact 'modle_bundle' \(known: .*model_bundle"):
        Catalog.for_run(tmp_path).path("modle_bundle")
    assert Catalog({}).get("features") is None


def test_numeric_sinks_skip_bools_and_nan() -> None:
    logged: dict[str, float] = {}
    io = Catalog({}, log_metric=logged.__setitem__)
    io.log_numeric({"a": 1, "b": {"c": 2.5, "ok": True, "nan": float("nan")}, "s": "x"})
    assert logged == {"a": 1.0, "b.c": 2.5}
    assert flat_numeric({"v": {"auc": 0.7}}) == {"v.auc": 0.7}


def _dag_outputs(ir: dict[str, Any]) -> dict[str, set[str]]:
    """Task name -> its output artefact names, over the root DAG and every sub-DAG."""
    comps = ir["components"]
    out: dict[str, set[str]] = {}
    for comp in [ir["root"], *comps.values()]:
        for name, task in ((comp.get("dag") or {}).get("tasks") or {}).items():
            ref = task["componentRef"]["name"]
            arts = (comps[ref].get("outputDefinitions") or {}).get("artifacts") or {}
            out[name] = set(arts)
    return out


def test_kfp_binding_matches_the_compiled_dag(tmp_path: Path) -> None:
    """Every (task, output) the catalog reads a finished run back from is a task and output of the DAG."""
    from clinrisk.pipeline_runner import compile_pipeline

    ir = yaml.safe_load(compile_pipeline(tmp_path / "p.yaml").read_text())
    outputs = _dag_outputs(ir)
    for name, (task, output, *_) in KFP_OUTPUTS.items():
        assert task in outputs, f"{name}: no task {task!r} in the DAG"
        assert output in outputs[task], f"{name}: task {task!r} has no output {output!r}"


def test_locate_outputs_reads_the_binding(tmp_path: Path) -> None:
    from clinrisk.experiments import locate_outputs

    io = Catalog.for_kfp_run(tmp_path)
    assert locate_outputs(tmp_path) == dict.fromkeys(
        ("evaluation_dir", "predictions", "bundle_dir", "features_dir", "selection_file")
    )
    io.path("model_bundle").mkdir(parents=True)
    assert locate_outputs(tmp_path)["bundle_dir"] == str(tmp_path / "train" / "bundle")


def _cli(*args: object) -> str:
    from typer.testing import CliRunner

    from clinrisk.cli import build_app
    from clinrisk.cli.common import reset_state

    reset_state()
    res = CliRunner().invoke(build_app(), [str(a) for a in args])
    reset_state()
    assert res.exit_code == 0, res.output
    return res.output


def test_cli_and_kfp_step_run_the_same_stage(tmp_path: Path) -> None:
    """`clinrisk train/evaluate` and the KFP train/evaluate steps call one ``run``: the same bundle bytes and
    the same evaluation from the same features and config; the step also fills its KFP-only sinks."""
    from clinrisk.config import save_config
    from clinrisk.steps import CONFIG_FILE, evaluate_step, train_step
    from tests.model.conftest import make_features_dataset, small_config

    features = make_features_dataset(tmp_path / "features", n_patients=800)
    cfg = small_config(tmp_path / "runs", "tracking.enabled=false")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    save_config(cfg, config_dir / CONFIG_FILE)
    config_file = config_dir / CONFIG_FILE

    _cli("train", "--config", config_file, "--features", features, "--out", tmp_path / "cli" / "bundle")
    logged: dict[str, float] = {}
    train_step(
        config_dir, features, tmp_path / "no-selection", "", tmp_path / "kfp" / "bundle", logged.__setitem__
    )
    cli_bundle, kfp_bundle = tmp_path / "cli" / "bundle", tmp_path / "kfp" / "bundle"
    for name in (
        "model.txt",
        "calibration.json",
        "threshold.json",
        "reference_stats.json",
        "feature_spec.json",
    ):
        assert (cli_bundle / name).read_bytes() == (kfp_bundle / name).read_bytes(), name
    cli_meta, kfp_meta = (json.loads((b / "metadata.json").read_text()) for b in (cli_bundle, kfp_bundle))
    assert cli_meta.pop("created_utc") and kfp_meta.pop("created_utc")  # the only field that may differ
    assert cli_meta == kfp_meta and cli_meta["bundle_version"]
    assert logged["validation.brier"] > 0  # the KFP metrics sink got the validation metrics

    _cli(
        "evaluate", "--config", config_file, "--bundle", cli_bundle, "--features", features,
        "--out", tmp_path / "cli" / "evaluation",
    )  # fmt: skip
    report = tmp_path / "kfp" / "report.md"
    evaluate_step(
        config_dir, kfp_bundle, features, "", tmp_path / "kfp" / "evaluation", report,
        report_html_file=tmp_path / "kfp" / "report.html",
    )  # fmt: skip
    cli_m = json.loads((tmp_path / "cli" / "evaluation" / "metrics.json").read_text())
    kfp_m = json.loads((tmp_path / "kfp" / "evaluation" / "metrics.json").read_text())
    assert cli_m.pop("bundle_dir") != kfp_m.pop("bundle_dir")
    assert cli_m == kfp_m
    assert "data:image/png;base64," in report.read_text()  # the UI's self-contained report
    assert (tmp_path / "kfp" / "report.html").is_file()
    assert not (tmp_path / "cli" / "report.md").exists()  # the CLI's catalog has no UI report sinks


def test_features_cli_and_kfp_steps_write_the_same_dataset(tmp_path: Path) -> None:
    """`clinrisk features` (the whole stage, two worker processes) and the DAG's three steps (fit the spec,
    one task per shard, merge) give byte-identical feature shards, spec and summary."""
    from clinrisk.config import load_config, save_config
    from clinrisk.io import list_shards
    from clinrisk.paths import RunPaths
    from clinrisk.steps import (
        CONFIG_FILE,
        build_features_shard_step,
        fit_feature_spec_step,
        merge_features_step,
    )
    from clinrisk.usecase_io import generate_raw
    from clinrisk.validate import validate_dataset

    repo = Path(__file__).resolve().parents[1]
    sets = [
        "generate.n_patients=300",
        "generate.block_size=100",
        "generate.n_shards=2",
        "generate.alpha=-4.6",
    ]
    cfg = load_config(
        repo / "configs/clinical/tiny.yaml", [*sets, f"run.output_dir={tmp_path}", "run.workers=1"]
    )
    root = RunPaths.for_config(cfg).root  # where the CLI's catalog looks without flags
    generate_raw(cfg, root / "raw", workers=1, progress=False)
    validate_dataset(cfg, root / "raw", root, workers=1)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    save_config(cfg, config_dir / CONFIG_FILE)

    _cli("features", "--config", config_dir / CONFIG_FILE, "--workers", "2")  # the run folder's layout
    fit_feature_spec_step(config_dir, root / "validated", tmp_path / "kfp" / "spec")
    parts = [tmp_path / "kfp" / f"part{s}" for s in (0, 1)]
    for s, part in enumerate(parts):
        build_features_shard_step(
            config_dir, tmp_path / "kfp" / "spec", root / "validated", root / "raw", s, part
        )
    merge_features_step(config_dir, tmp_path / "kfp" / "spec", parts, tmp_path / "kfp" / "features")

    cli, kfp = root / "features", tmp_path / "kfp" / "features"
    cli_files = sorted(p.relative_to(cli) for p in cli.rglob("*") if p.is_file())
    assert cli_files == sorted(p.relative_to(kfp) for p in kfp.rglob("*") if p.is_file())
    assert len(list_shards(cli)) == 2 and (cli / "unit_quarantine").is_dir()
    for rel in cli_files:
        assert (cli / rel).read_bytes() == (kfp / rel).read_bytes(), rel


def test_features_cli_names_a_missing_truth_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clinrisk.cli import build_app

    res = CliRunner().invoke(
        build_app(),
        [
            "features",
            "--validated",
            str(tmp_path),
            "--truth",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "f"),
        ],
    )
    assert res.exit_code == 2 and f"{tmp_path / 'nope'}: dataset directory not found" in res.output
    assert not (tmp_path / "f").exists()
