"""The stage catalog: one layout by logical name, its KFP binding checked against the compiled DAG, and the
CLI and the KFP step of a stage calling the same ``run`` with the same result."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinrisk.errors import ConfigError
from clinrisk.stages.catalog import (
    FUSED_MODEL_TASK,
    FUSED_STEPS,
    KFP_OUTPUTS,
    RUN_LAYOUT,
    Catalog,
    flat_numeric,
)


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

    # the pipeline spec: the first document (the second is the Kubernetes platform spec)
    ir = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    outputs = _dag_outputs(ir)
    for name, (task, output, *_) in KFP_OUTPUTS.items():
        assert task in outputs, f"{name}: no task {task!r} in the DAG"
        assert output in outputs[task], f"{name}: task {task!r} has no output {output!r}"


def test_kfp_binding_of_the_local_shape_with_one_model_task(tmp_path: Path) -> None:
    """A run whose model half was one task (the local runner's default) is read back from that task's
    folder, whose outputs carry the per-step names; a per-step run from the steps' folders."""
    from kfp import compiler
    from pipelines.training import build_training_pipeline

    compiler.Compiler().compile(build_training_pipeline(fuse_steps=True), str(tmp_path / "p.yaml"))
    outputs = _dag_outputs(yaml.safe_load((tmp_path / "p.yaml").read_text()))
    run = tmp_path / "run"
    (run / FUSED_MODEL_TASK).mkdir(parents=True)
    io = Catalog.for_kfp_run(run)
    for name, (task, output, *rest) in KFP_OUTPUTS.items():
        expected = FUSED_MODEL_TASK if task in FUSED_STEPS else task
        assert io.path(name) == run.joinpath(expected, output, *rest), name
        assert output in outputs[expected], f"{name}: task {expected!r} has no output {output!r}"
    assert (
        Catalog.for_kfp_run(tmp_path / "other").path("model_bundle")
        == tmp_path / "other" / "train" / "bundle"
    )


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

    from clinrisk.cli.app import build_app
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

    # The raw manifest the catalog supplies gives the data hash: beside the features for the CLI, the
    # merge-data artefact for the step (before, the step looked beside the features too and found nothing).
    manifest = json.dumps({"content_hash": "c0ffee"})
    for raw in (tmp_path / "raw", tmp_path / "kfp-raw"):
        raw.mkdir()
        (raw / "manifest.json").write_text(manifest)
    _cli("train", "--config", config_file, "--features", features, "--out", tmp_path / "cli" / "bundle")
    logged: dict[str, float] = {}
    train_step(
        config_dir, features, tmp_path / "no-selection", "", tmp_path / "kfp" / "bundle", logged.__setitem__,
        raw_dir=tmp_path / "kfp-raw",
    )  # fmt: skip
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
    assert cli_meta["data_hash"] == cli_meta["raw_manifest_hash"] == "c0ffee"
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

    from clinrisk.cli.app import build_app

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


# --------------------------------------------------------------------------- generate + validate


def _tiny(tmp_path: Path, *more: str) -> Any:
    from clinrisk.config import load_config

    repo = Path(__file__).resolve().parents[1]
    sets = [
        "generate.n_patients=300",
        "generate.block_size=100",
        "generate.n_shards=2",
        "generate.alpha=-4.6",
        f"run.output_dir={tmp_path}",
        "run.workers=1",
        *more,
    ]
    return load_config(repo / "configs/clinical/tiny.yaml", sets)


def _config_dir(cfg: Any, where: Path) -> Path:
    from clinrisk.config import save_config
    from clinrisk.steps import CONFIG_FILE

    where.mkdir(parents=True, exist_ok=True)
    save_config(cfg, where / CONFIG_FILE)
    return where


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _shard_files(root: Path) -> dict[str, bytes]:
    """The shard files directly under ``root`` (a validated or quarantine folder, whatever sits beside)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob("shard=*/part.parquet"))}


def _report_without_paths(report_dir: Path) -> dict[str, Any]:
    """report.json less the fields that name where the files were (a run folder vs KFP task folders)."""
    report = json.loads((report_dir / "report.json").read_text())
    for shard in report["shards"]:
        assert shard.pop("file").endswith(f"shard={shard['shard']:03d}/part.parquet")
    assert report["raw_manifest"].pop("path").endswith("manifest.json")
    return dict(report)


def _kfp_generate_and_validate(config_dir: Path, work: Path, n: int) -> tuple[Path, Path, Path]:
    """The DAG's data steps, in order: plan, one generate and validate task per shard, merge-data."""
    from clinrisk.steps import (
        generate_shard_step,
        merge_data_step,
        plan_generation_step,
        validate_shard_step,
    )

    shards = plan_generation_step(config_dir, work / "plan")
    assert shards == list(range(n))
    raw_parts = [work / f"raw-{s}" for s in shards]
    val_parts = [work / f"val-{s}" for s in shards]
    for s in shards:
        generate_shard_step(config_dir, work / "plan", s, raw_parts[s])
        validate_shard_step(config_dir, raw_parts[s], s, val_parts[s])
    raw, validated = work / "raw", work / "validated"
    merge_data_step(config_dir, work / "plan", raw_parts, val_parts, raw, validated, work / "report.md")
    # The report names the raw manifest where merge-data published it, not its staging folder.
    report = json.loads((validated / "validation" / "report.json").read_text())
    assert report["raw_manifest"]["path"] == str(raw / "manifest.json")
    assert (raw / "manifest.json").is_file()
    return raw, validated, work / "report.md"


def test_generate_and_validate_cli_and_kfp_steps_write_the_same_datasets(tmp_path: Path) -> None:
    """`clinrisk generate` + `clinrisk validate` (the run folder) and the DAG's data steps (plan, a task per
    shard, merge-data) give byte-identical raw datasets (shards, truth, manifest, config), validated shards,
    quarantine and the same report; the catalogs name where each side put them."""
    from clinrisk.config import load_config
    from clinrisk.steps import CONFIG_FILE

    cfg = _tiny(tmp_path)
    config_dir = _config_dir(cfg, tmp_path / "config")
    _cli("generate", "--config", config_dir / CONFIG_FILE, "--no-progress")
    _cli("validate", "--config", config_dir / CONFIG_FILE, "--workers", "2")
    cli = Catalog.for_config(load_config(config_dir / CONFIG_FILE))
    raw, validated, report_md = _kfp_generate_and_validate(config_dir, tmp_path / "kfp", 2)
    kfp = Catalog({}).with_paths(
        raw=raw,
        validated=validated,
        quarantine=validated / "quarantine",
        validation=validated / "validation",
    )
    assert _files(cli.path("raw")) == _files(kfp.path("raw"))  # manifest.json and config.yaml included
    assert len(_shard_files(cli.path("validated"))) == 2
    for name in ("validated", "quarantine"):
        assert _shard_files(cli.path(name)) == _shard_files(kfp.path(name)), name
    assert _report_without_paths(cli.path("validation")) == _report_without_paths(kfp.path("validation"))
    assert report_md.read_text().startswith("# Raw data validation report")


def _tamper(raw: Path) -> None:
    """Rows a validator must quarantine (a year outside the calendar: whole row; a negative blood pressure:
    the value), written back with the manifest's file hashes updated (so only validation can notice)."""
    import polars as pl

    from clinrisk.io import sha256_file

    f = raw / "observed" / "shard=001" / "part.parquet"
    df = pl.read_parquet(f)
    idx = pl.int_range(pl.len())
    df = df.with_columns(
        pl.when(idx < 3).then(pl.lit(1800, pl.Int16)).otherwise(pl.col("year")).alias("year"),
        pl.when((idx >= 3) & (idx < 5))
        .then(pl.lit(-10.0, pl.Float32))
        .otherwise(pl.col("sbp_mmhg"))
        .alias("sbp_mmhg"),
    )
    df.write_parquet(f)
    manifest = json.loads((raw / "manifest.json").read_text())
    manifest["files_sha256"]["observed/shard=001/part.parquet"] = sha256_file(f)
    (raw / "manifest.json").write_text(json.dumps(manifest))


def test_validate_cli_and_kfp_steps_quarantine_the_same_rows(tmp_path: Path) -> None:
    """On raw data with bad rows, `clinrisk validate` and the DAG's validate tasks + merge give the same
    validated shards, the same quarantine (rows with reasons) and the same report."""
    import polars as pl

    from clinrisk.stages import validate as validate_stage
    from clinrisk.steps import CONFIG_FILE, validate_shard_step
    from clinrisk.validate import checked_raw_manifest

    cfg = _tiny(tmp_path)
    config_dir = _config_dir(cfg, tmp_path / "config")
    _cli("generate", "--config", config_dir / CONFIG_FILE, "--no-progress")
    cli = Catalog.for_config(cfg)
    _tamper(cli.path("raw"))
    _cli("validate", "--config", config_dir / CONFIG_FILE)

    parts = [tmp_path / "kfp" / f"val-{s}" for s in (0, 1)]
    for s, part in enumerate(parts):
        validate_shard_step(config_dir, cli.path("raw"), s, part)  # a raw dataset is a raw shard's layout
    kfp = tmp_path / "kfp" / "validated"
    validate_stage.collect(
        cfg, checked_raw_manifest(cli.path("raw")), parts, kfp, kfp / "quarantine", kfp / "validation"
    )
    for name, there in (("validated", kfp), ("quarantine", kfp / "quarantine")):
        assert _shard_files(cli.path(name)) == _shard_files(there), name
    report = _report_without_paths(cli.path("validation"))
    assert report == _report_without_paths(kfp / "validation")
    assert report["rows_quarantined"] == 3 and report["values_quarantined"] >= 2
    quarantined = pl.read_parquet(cli.path("quarantine") / "shard=001" / "part.parquet")
    assert quarantined.height == 3 and quarantined["_reason"].str.len_chars().min() > 0


def test_validate_bad_input_is_one_line_and_publishes_nothing(tmp_path: Path) -> None:
    """A truncated raw shard: the CLI says one `error:` line naming the file (exit 2), the KFP task raises
    the same DataError; neither publishes anything."""
    from typer.testing import CliRunner

    from clinrisk.cli.app import build_app
    from clinrisk.cli.common import reset_state
    from clinrisk.errors import DataError
    from clinrisk.steps import CONFIG_FILE, validate_shard_step

    cfg = _tiny(tmp_path)
    config_dir = _config_dir(cfg, tmp_path / "config")
    _cli("generate", "--config", config_dir / CONFIG_FILE, "--no-progress")
    cli = Catalog.for_config(cfg)
    bad = cli.path("raw") / "observed" / "shard=001" / "part.parquet"
    bad.write_bytes(bad.read_bytes()[:100])

    reset_state()
    res = CliRunner().invoke(build_app(), ["validate", "--config", str(config_dir / CONFIG_FILE)])
    reset_state()
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and str(bad) in res.output and "Traceback" not in res.output
    for name in ("validated", "quarantine", "validation"):
        assert not cli.path(name).exists(), name
    with pytest.raises(DataError, match="unreadable Parquet shard"):
        validate_shard_step(config_dir, cli.path("raw"), 1, tmp_path / "kfp" / "val-1")
    assert not (tmp_path / "kfp" / "val-1").exists()


def test_merge_data_refuses_a_patient_in_two_shards_and_publishes_nothing(tmp_path: Path) -> None:
    """A patient in two shards stops merge-data (the raw manifest's check, and behind it the validation
    gate `clinrisk validate` shares), and neither dataset is published."""
    import shutil

    from clinrisk.errors import DataError
    from clinrisk.steps import (
        generate_shard_step,
        merge_data_step,
        plan_generation_step,
        validate_shard_step,
    )

    cfg = _tiny(tmp_path)
    config_dir = _config_dir(cfg, tmp_path / "config")
    work = tmp_path / "kfp"
    assert plan_generation_step(config_dir, work / "plan") == [0, 1]
    generate_shard_step(config_dir, work / "plan", 0, work / "raw-0")
    # shard 1 is shard 0's patients again (an export split by something other than the patient)
    (work / "raw-1").mkdir()
    for table in ("observed", "truth"):
        shutil.copytree(work / "raw-0" / table / "shard=000", work / "raw-1" / table / "shard=001")
    parts = [work / "raw-0", work / "raw-1"]
    for s in (0, 1):
        validate_shard_step(config_dir, parts[s], s, work / f"val-{s}")
    with pytest.raises(DataError, match=r"patient ids overlap|appears in several shards"):
        merge_data_step(
            config_dir, work / "plan", parts, [work / "val-0", work / "val-1"],
            work / "raw", work / "validated", work / "report.md",
        )  # fmt: skip
    assert not (work / "raw").exists() and not (work / "validated").exists()
    assert not (work / "report.md").exists()


# --------------------------------------------------------------------------- register + deploy


def _registry_effect(cfg: Any, run_id: str) -> dict[str, Any]:
    """What a registration left: the version, its aliases and tags, the run's status and artefact paths."""
    from clinrisk.tracking import configure, mlflow_client

    configure(cfg)
    client = mlflow_client()
    name = cfg.tracking.registered_model_name
    (version,) = client.search_model_versions(f"name = '{name}'")
    # less the run's id and the promotion's time, which name this registration, not its content
    tags = {k: v for k, v in version.tags.items() if "run" not in k and not k.endswith("_utc")}

    def artefacts(path: str = "") -> list[str]:
        out: list[str] = []
        for f in client.list_artifacts(run_id, path):
            out += artefacts(f.path) if f.is_dir else [f.path]
        return out

    return {
        "version": version.version,
        "aliases": sorted(
            a for a, v in client.get_registered_model(name).aliases.items() if v == version.version
        ),
        "tags": tags,
        "status": client.get_run(run_id).info.status,
        # the promotion record's folder is named by its time
        "artefacts": sorted(
            re.sub(r"^promotion/[^/]+-v", "promotion/<time>-v", a)
            for a in artefacts()
            if not a.startswith("model/")
        ),
        "model_source": bool(version.source),  # the logged pyfunc model the version points at
    }


def test_register_cli_and_kfp_step_have_the_same_registry_effect(tmp_path: Path) -> None:
    """`clinrisk register` (a run of its own) and the DAG's register step (the pipeline's run) call one
    ``run``: the same version with the same tags, ``challenger`` and, with no champion yet, ``champion``; the
    same small artefacts (validation report, config, model); the run ended. A bad bundle is one error line
    (exit 2) on the CLI, the same DataError in the step, and registers nothing in either store."""
    from typer.testing import CliRunner

    from clinrisk.cli.app import build_app
    from clinrisk.cli.common import reset_state
    from clinrisk.errors import DataError
    from clinrisk.steps import CONFIG_FILE, register_step, start_tracking_step, train_step
    from tests.model.conftest import make_features_dataset, small_config

    features = make_features_dataset(tmp_path / "features", n_patients=800)
    config_dir = _config_dir(small_config(tmp_path / "t", "tracking.enabled=false"), tmp_path / "t-config")
    bundle = tmp_path / "bundle"
    train_step(config_dir, features, tmp_path / "no-selection", "", bundle)
    report = {"rows_in": 1}
    cfg_cli, cfg_kfp = small_config(tmp_path / "cli"), small_config(tmp_path / "kfp")
    cli_dir, kfp_dir = (
        _config_dir(cfg_cli, tmp_path / "cli-config"),
        _config_dir(cfg_kfp, tmp_path / "kfp-config"),
    )
    cli_run = Catalog.for_config(cfg_cli)
    for validation in (cli_run.path("validation"), tmp_path / "validated" / "validation"):
        validation.mkdir(parents=True)
        (validation / "report.json").write_text(json.dumps(report))
        (validation / "report.md").write_text("# report\n")

    out = _cli("register", "--config", cli_dir / CONFIG_FILE, "--bundle", bundle)
    assert "version 1 (@challenger and @champion" in out
    run_id = start_tracking_step(kfp_dir, "kfp-run")
    uri = register_step(
        kfp_dir, bundle, tmp_path / "no-evaluation", tmp_path / "report.md", run_id, tmp_path / "validated"
    )
    assert uri == f"models:/{cfg_kfp.tracking.registered_model_name}/1"
    cli_run_id = out.split(" run ")[1].split(",")[0]
    cli_effect, kfp_effect = _registry_effect(cfg_cli, cli_run_id), _registry_effect(cfg_kfp, run_id)
    assert cli_effect == kfp_effect
    assert cli_effect["aliases"] == ["challenger", "champion"] and cli_effect["status"] == "FINISHED"
    assert cli_effect["model_source"] and {
        "config/config.yaml", "validation/report.json", "validation/report.md"
    } <= set(cli_effect["artefacts"])  # fmt: skip

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text("{")
    reset_state()
    res = CliRunner().invoke(
        build_app(), ["register", "--config", str(cli_dir / CONFIG_FILE), "--bundle", str(broken)]
    )
    reset_state()
    assert res.exit_code == 2 and res.output.startswith("error: ") and str(broken) in res.output
    with pytest.raises(DataError, match=re.escape(str(broken))):
        register_step(kfp_dir, broken, tmp_path / "e", tmp_path / "report.md", run_id)
    # nothing changed in either registry (one version, the same aliases, tags and run)
    assert _registry_effect(cfg_cli, cli_run_id) == _registry_effect(cfg_kfp, run_id) == kfp_effect

    # tracking off: the step's rule for both (nothing registered, the model is the bundle's path)
    off = small_config(tmp_path / "off", "tracking.enabled=false")
    out = _cli(
        "register", "--config", _config_dir(off, tmp_path / "off-config") / CONFIG_FILE, "--bundle", bundle
    )
    assert f"nothing registered; the model is {bundle}" in out
    assert not Catalog.for_config(off).path("mlflow").exists()


def test_deploy_cli_and_kfp_step_patch_the_same_canary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`clinrisk rollout canary` and the DAG's deploy step call one ``run``: the same patch of the
    InferenceService; both resolve a ``models:/`` URI first (before, the CLI passed it to KServe as it was),
    and both refuse a bad percentage before touching anything."""
    from clinrisk import rollout as ro
    from clinrisk.errors import ConfigError
    from clinrisk.steps import CONFIG_FILE, deploy_canary_step
    from tests.k8s.conftest import load_fixture
    from tests.k8s.test_rollout import V2, RecordingApi

    config_dir = _config_dir(_tiny(tmp_path), tmp_path / "config")
    apis: list[RecordingApi] = []

    def fake_api(context: str | None = None) -> RecordingApi:
        apis.append(RecordingApi([load_fixture("stable"), load_fixture("canary_in_progress")]))
        return apis[-1]

    monkeypatch.setattr(ro, "KubernetesIsvcApi", fake_api)
    _cli("rollout", "canary", "--config", config_dir / CONFIG_FILE, "--model-uri", V2, "--percent", "10")
    step_api = RecordingApi([load_fixture("stable"), load_fixture("canary_in_progress")])
    deploy_canary_step(config_dir, V2, "", "", 10, api=step_api)
    assert apis[0].patches == step_api.patches and V2 in str(step_api.patches)

    from typer.testing import CliRunner

    from clinrisk.cli.app import build_app
    from clinrisk.cli.common import reset_state

    reset_state()
    res = CliRunner().invoke(
        build_app(),
        [
            "rollout",
            "canary",
            "--config",
            str(config_dir / CONFIG_FILE),
            "--model-uri",
            V2,
            "--percent",
            "120",
        ],
    )
    reset_state()
    assert res.exit_code == 2 and res.output.startswith("error: ") and "percent" in res.output
    with pytest.raises((ConfigError, ro.RolloutError, ValueError)):
        deploy_canary_step(config_dir, V2, "", "", 120, api=step_api)
    assert len(apis) == 1 and len(step_api.patches) == 1  # nothing patched by either refusal

    # a registry URI is resolved first; with no registry there, one line and no store created
    reset_state()
    res = CliRunner().invoke(
        build_app(),
        ["rollout", "canary", "--config", str(config_dir / CONFIG_FILE), "--model-uri", "models:/clinical/1",
         "--percent", "10"],
    )  # fmt: skip
    reset_state()
    store = Catalog.for_config(_tiny(tmp_path)).path("mlflow")
    assert res.exit_code == 2 and res.output.startswith("error: no MLflow store at "), res.output
    assert not store.exists() and len(apis) == 1
