"""The segmentation KFP DAG through kfp.local: the main job `clinrisk run --usecase segmentation` on the tiny
config, fed a real image/mask folder with bad files (ingest → validate with quarantine → train → evaluate →
register with the promotion margin → the serving smoke test: the real ModelServer answering a V1 request),
compiled for the cluster, and its canary deploy step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

pytest.importorskip("jax")

from clinrisk.config import load_config
from clinrisk.io import list_shards
from clinrisk.usecases import get
from clinrisk.usecases.segmentation.imaging import encode_png
from tests.usecases.segmentation.conftest import TINY

SEG = get("segmentation")
TASKS = [
    "resolve-config", "start-tracking", "plan-generation", "merge-data",
    "train-segmentation", "evaluate-segmentation", "register-segmentation",
]  # fmt: skip


def _export_folder(root: Path) -> Path:
    """The tiny synthetic set written as a public-dataset layout (images/ + masks/ paired by file name),
    plus two bad files: an image with no mask and a mask whose image is not an image."""
    cfg = load_config(TINY, [f"run.output_dir={root}"])
    plan = SEG.source.plan(cfg)
    src = root / "export"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for s in range(plan["n_shards"]):
        table = SEG.source.generate_shard(cfg, plan, s).tables["images"]
        for image_id, image, mask in table.select("image_id", "image", "mask").iter_rows():
            (src / "images" / f"{image_id}.png").write_bytes(image)
            (src / "masks" / f"{image_id}.png").write_bytes(mask)
    (src / "images" / "p000099_s00.png").write_bytes(encode_png(np.zeros((32, 32), np.uint8)))
    (src / "images" / "p000098_s00.png").write_bytes(b"\x89PNG truncated")
    (src / "masks" / "p000098_s00.png").write_bytes(encode_png(np.zeros((32, 32), np.uint8)))
    return src


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from typer.testing import CliRunner

    from clinrisk.cli.app import build_app

    root = tmp_path_factory.mktemp("seg-pipeline")
    src = _export_folder(root)
    sets = [
        f"run.output_dir={root}",
        f"params.data.source={src}",
        "validate.max_quarantine_fraction=0.2",  # 2 of 18 files are bad on purpose
    ]
    # The README's main job (`clinrisk run`): the pipeline, then the serving smoke test of what it registered.
    args = ["run", "--usecase", "segmentation", "-c", str(TINY)]
    for s in sets:
        args += ["-s", s]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    run_root = root / "seg-tiny"
    return {
        "output": result.output,
        "dir": (run_root / "latest").resolve(),
        "run_root": run_root,
        "cfg": load_config(TINY, sets),
    }


@pytest.mark.slow  # one whole pipeline run (11 task processes), shared by the module
def test_every_step_ran_and_bad_files_were_quarantined(pipeline_run: dict[str, Any]) -> None:
    d = pipeline_run["dir"]
    assert d.name.startswith("clinrisk-segmentation-")
    for task in TASKS:
        assert (d / task).is_dir(), task
    assert (d / "for-loop-2-iteration-0" / "validate-shard").is_dir()  # ingest is one shard
    validated = d / "merge-data" / "validated"
    report = json.loads((validated / "validation" / "report.json").read_text())
    assert (report["rows_in"], report["rows_valid"], report["rows_quarantined"]) == (18, 16, 2)
    q = pl.concat([pl.read_parquet(f) for f in list_shards(validated / "quarantine")])
    assert dict(zip(q["image_id"], q["_check"], strict=True)) == {
        "p000098_s00": "unreadable",
        "p000099_s00": "missing_mask",
    }
    assert "registered model : models:/segmentation/1" in pipeline_run["output"]


@pytest.mark.slow  # one whole pipeline run (11 task processes), shared by the module
def test_the_dag_trains_the_same_model_as_the_cli_and_registers_it_as_champion(
    pipeline_run: dict[str, Any],
) -> None:
    from mlflow.tracking import MlflowClient

    from clinrisk.usecases.segmentation.dataset import load_image_set
    from clinrisk.usecases.segmentation.run import eval_run, params

    d, cfg = pipeline_run["dir"], pipeline_run["cfg"]
    trained = json.loads((d / "train-segmentation" / "model" / "train_metrics.json").read_text())
    evaluation = json.loads((d / "evaluate-segmentation" / "evaluation" / "metrics.json").read_text())
    # the DAG's shards hold exactly the images the CLI path loads from the same folder
    assert trained["data_hash"] == load_image_set(cfg, params(cfg)).data_hash
    assert (trained["images"], trained["quarantined"]) == (16, 2)
    ckpt = d / "train-segmentation" / "model" / "best.npz"
    assert eval_run(cfg, ckpt)["val_dice"] == pytest.approx(evaluation["val_dice"])
    assert (d / "evaluate-segmentation" / "report").read_text().startswith("# Segmentation evaluation")

    uri = f"sqlite:///{pipeline_run['run_root'].resolve() / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("segmentation", "champion")
    assert str(champion.version) == "1"
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kfp.pipeline_state"] == "SUCCEEDED"
    assert run.data.tags["clinrisk.promotion"] == "promoted: no champion yet"
    assert run.data.metrics["final.val_dice"] == pytest.approx(evaluation["val_dice"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")] == [1, 2]
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "segmentation")}
    assert {"segmentation/best.npz", "segmentation/evaluation", "segmentation/learning_curves.png"} <= arts


def test_the_pipeline_compiles_for_the_cluster_with_the_segmentation_image(tmp_path: Path) -> None:
    import yaml

    from clinrisk.pipeline_runner import compile_pipeline

    cfg = load_config(TINY, [f"run.output_dir={tmp_path}"])
    ir = yaml.safe_load(compile_pipeline(tmp_path / "seg.yaml", cfg=cfg).read_text())
    assert ir["pipelineInfo"]["name"] == "clinrisk-segmentation"
    executors = ir["deploymentSpec"]["executors"]
    images = {name: e["container"]["image"] for name, e in executors.items()}
    assert images["exec-train-segmentation"].startswith("clinrisk/segmentation:")
    assert images["exec-validate-shard"].startswith("clinrisk/pipeline:")
    dag = ir["root"]["dag"]["tasks"]
    assert (
        "exit-handler-1" in dag
        and dag["finalize-tracking"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    )


@pytest.mark.slow  # one whole pipeline run (11 task processes), shared by the module
def test_the_deploy_step_rolls_out_a_checkpoint_and_refuses_what_kserve_cannot_fetch(
    pipeline_run: dict[str, Any],
) -> None:
    from clinrisk import rollout as ro
    from clinrisk.errors import DataError
    from clinrisk.usecases.segmentation.deploy import inference_service
    from clinrisk.usecases.segmentation.steps import checkpoint_storage_uri, deploy_canary_step
    from tests.usecases.segmentation.test_rollout import SimulatedService

    config_dir = pipeline_run["dir"] / "resolve-config" / "config"
    cfg = load_config(config_dir / "config.yaml")
    # the registered version is the run's checkpoint folder (what KServe's storage initializer downloads)
    local = checkpoint_storage_uri(cfg, "models:/segmentation@champion")
    assert local.startswith("file://") and Path(local.removeprefix("file://"), "best.npz").is_file()
    with pytest.raises(DataError, match="models:/segmentation/9: cannot resolve"):
        checkpoint_storage_uri(cfg, "models:/segmentation/9")

    v1, v2 = "s3://mlflow/9/aaa/artifacts/segmentation", "s3://mlflow/9/bbb/artifacts/segmentation"
    api = SimulatedService(inference_service(cfg, v1), ["stable", "canary_in_progress"])
    summary = deploy_canary_step(config_dir, v2, "", "", 10, api=api)
    assert "Canary" in summary and ro.model_uri_of(api.doc) == v2
    # a local store's file:// checkpoint cannot be fetched by the cluster: refused before any patch
    api = SimulatedService(inference_service(cfg, v1), ["stable"])
    with pytest.raises(ro.RolloutError, match="unsupported scheme"):
        deploy_canary_step(config_dir, "models:/segmentation/1", "", "", 10, api=api)
    assert api.patches == []


def test_a_use_case_with_its_own_model_but_no_pipeline_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    from clinrisk.errors import ConfigError
    from clinrisk.pipeline_runner import pipeline_for

    cfg = load_config(TINY, [f"run.output_dir={tmp_path}"])
    assert pipeline_for(cfg)[0] == "clinrisk-segmentation"
    assert pipeline_for(load_config(None, [f"run.output_dir={tmp_path}"]))[0] == "clinrisk-training"
    real = importlib.import_module

    def without_segmentation_pipeline(name: str, package: str | None = None) -> Any:
        if name == "pipelines.segmentation":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_segmentation_pipeline)
    with pytest.raises(ConfigError, match="trains its own model and has no pipeline"):
        pipeline_for(cfg)


@pytest.mark.slow  # one whole pipeline run (11 task processes), shared by the module
def test_the_main_job_serves_what_it_registered_and_sends_it_validation_images(
    pipeline_run: dict[str, Any],
) -> None:
    out = pipeline_run["output"]
    (post,) = [line for line in out.splitlines() if line.startswith("serving smoke test: POST")]
    assert post.endswith("/v1/models/segmentation:predict"), post
    (response,) = [line for line in out.splitlines() if line.startswith("response")]
    assert '"mask_png_b64"' in response and '"confidence"' in response, response
    assert "probability" not in out  # not the tabular smoke test


def test_the_smoke_test_resolves_the_registered_checkpoint_and_checks_the_masks(
    pipeline_run: dict[str, Any],
) -> None:
    from clinrisk.errors import DataError, StageError
    from clinrisk.usecases.segmentation.plugin import patient_key
    from clinrisk.usecases.segmentation.smoke import check_answer, checkpoint_of, validation_request

    d = pipeline_run["dir"]
    cfg = load_config(d / "resolve-config" / "config" / "config.yaml")
    ckpt = checkpoint_of(cfg, "models:/segmentation@champion", d / "smoke-test-download")
    assert ckpt.read_bytes() == (d / "train-segmentation" / "model" / "best.npz").read_bytes()
    with pytest.raises(DataError, match="models:/segmentation/9: cannot resolve registered model"):
        checkpoint_of(cfg, "models:/segmentation/9", d / "smoke-test-download")
    request = validation_request(cfg, d / "merge-data" / "validated")
    ids = [i["id"] for i in request["instances"]]
    split = json.loads((d / "train-segmentation" / "model" / "split.json").read_text())
    assert len(ids) == 2 and {patient_key(i.split("_")[0]) for i in ids} <= set(split["validation_patients"])
    # A wrong answer is a StageError: a mask of another size than its image.
    wrong = {"predictions": [{"id": i, "mask_png_b64": encode_b64(np.zeros((8, 8), np.uint8)), "confidence": 0.5}
                             for i in ids]}  # fmt: skip
    with pytest.raises(StageError, match="mask 8x8"):
        check_answer(request, wrong)


def encode_b64(mask: np.ndarray) -> str:
    import base64

    return base64.b64encode(encode_png(mask)).decode()


def test_a_checkpoint_the_server_cannot_load_fails_the_smoke_test_fast_with_its_log(
    pipeline_run: dict[str, Any], tmp_path: Path
) -> None:
    import shutil

    from clinrisk.errors import StageError
    from clinrisk.usecases.segmentation.smoke import serving_smoke_test

    d = pipeline_run["dir"]
    cfg = load_config(d / "resolve-config" / "config" / "config.yaml")
    model = tmp_path / "model"
    shutil.copytree(d / "train-segmentation" / "model", model)
    (model / "best.npz").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(StageError, match="exited with code 2 before it was ready") as err:
        serving_smoke_test(cfg, str(model), d / "merge-data" / "validated", timeout_s=170)
    # "exited ... before it was ready": it stopped waiting when the server exited (not after the timeout)
    assert "error: " in str(err.value) and "best.npz" in str(err.value)  # the server's own one-line error
