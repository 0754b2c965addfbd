"""Training (determinism, best checkpoint, per-epoch metrics), checkpoints, MLflow + registry, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("jax")

from clinrisk.errors import DataError
from clinrisk.usecases.segmentation.checkpoint import load_checkpoint
from clinrisk.usecases.segmentation.model import dice_iou
from clinrisk.usecases.segmentation.run import eval_run, run_dir, train_run
from clinrisk.usecases.segmentation.tracking import promotion_decision
from tests.usecases.segmentation.conftest import TINY, tiny_cfg


def test_training_writes_per_epoch_metrics_and_the_best_checkpoint(trained: tuple[Any, dict, Path]) -> None:
    cfg, metrics, _ = trained
    out = run_dir(cfg)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        for k in ("train_dice", "train_iou", "val_dice", "val_iou"):
            assert 0.0 <= h[k] <= 1.0
    best = int(np.argmax([h["val_dice"] for h in history])) + 1
    assert metrics["best_epoch"] == best
    assert metrics["val_dice"] == pytest.approx(history[best - 1]["val_dice"])  # the checkpoint IS that epoch
    for f in (
        "manifest.parquet",
        "quarantine.parquet",
        "split.json",
        "per_image.parquet",
        "learning_curves.png",
        "overlays.png",
    ):
        assert (out / f).is_file(), f
    split = json.loads((out / "split.json").read_text())
    assert split["train_images"] + split["validation_images"] == metrics["images"]


def test_same_config_gives_the_same_metrics_and_checkpoint(
    tmp_path: Path, trained: tuple[Any, dict, Path]
) -> None:
    cfg, metrics, _ = trained
    again = train_run(tiny_cfg(tmp_path), track=False)
    for k in ("val_dice", "val_iou", "train_dice", "best_epoch", "data_hash", "ckpt_sha256"):
        assert again[k] == metrics[k], k
    assert (
        json.loads((run_dir(tiny_cfg(tmp_path)) / "history.json").read_text())[-1]["loss"]
        == json.loads((run_dir(cfg) / "history.json").read_text())[-1]["loss"]
    )


def test_eval_reproduces_the_training_validation_score(trained: tuple[Any, dict, Path]) -> None:
    cfg, metrics, ckpt = trained
    ev = eval_run(cfg, ckpt)
    assert ev["val_dice"] == pytest.approx(metrics["val_dice"]) and ev["val_images"] == metrics["val_images"]


def test_mlflow_run_has_epochs_artifacts_and_the_registry_champion(trained: tuple[Any, dict, Path]) -> None:
    from mlflow.tracking import MlflowClient

    from clinrisk.tracking import tracking_uri

    cfg, metrics, _ = trained
    client = MlflowClient(tracking_uri(cfg), registry_uri=tracking_uri(cfg))
    hist = client.get_metric_history(metrics["mlflow_run_id"], "val_dice")
    assert sorted(m.step for m in hist) == [1, 2]
    final = client.get_run(metrics["mlflow_run_id"]).data.metrics
    assert final["final.val_dice"] == pytest.approx(metrics["val_dice"]) and "final.best_epoch" in final
    arts = {a.path for a in client.list_artifacts(metrics["mlflow_run_id"], "segmentation")}
    assert {"segmentation/best.npz", "segmentation/learning_curves.png", "segmentation/overlays.png"} <= arts
    assert metrics["promoted"] and metrics["promotion_reason"] == "no champion yet"
    champ = client.get_model_version_by_alias("segmentation", "champion")
    assert str(champ.version) == metrics["model_version"]


def test_promotion_needs_the_stated_margin() -> None:
    assert promotion_decision(0.70, None, 0.01)[0]
    assert promotion_decision(0.72, 0.70, 0.01)[0]
    assert not promotion_decision(0.705, 0.70, 0.01)[0]


def test_dice_iou_edge_cases() -> None:
    empty = np.zeros((1, 4, 4), bool)
    full = np.ones((1, 4, 4), bool)
    assert dice_iou(empty, empty) == (1.0, 1.0)
    assert dice_iou(full, empty)[0][0] == 0.0
    half = full.copy()
    half[0, :2] = False
    d, i = dice_iou(half, full)
    assert d[0] == pytest.approx(2 * 8 / 24) and i[0] == pytest.approx(0.5)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clinrisk", "segmentation", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_corrupt_checkpoint_is_one_line_and_exit_2(tmp_path: Path, trained: tuple[Any, dict, Path]) -> None:
    _, _, ckpt = trained
    data = ckpt.read_bytes()
    cases = {"garbage.npz": b"not a zip", "truncated.npz": data[: len(data) // 2]}
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    cases["flipped.npz"] = bytes(flipped)
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=rf"{name}: (corrupt|not a)"):
            load_checkpoint(tmp_path / name)
    proc = _cli("eval", "--config", str(TINY), "--ckpt", str(tmp_path / "truncated.npz"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip().count("\n") == 0
        and proc.stderr.startswith("error: ")
        and "corrupt checkpoint" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_infer_cli_writes_masks_and_refuses_a_non_image(
    tmp_path: Path, trained: tuple[Any, dict, Path]
) -> None:
    """In this process (the compiled model is reused); the process boundary is the test above's."""
    from typer.testing import CliRunner

    from clinrisk.cli.app import build_app
    from clinrisk.usecases.segmentation.imaging import decode_gray, encode_png

    _, _, ckpt = trained
    img = tmp_path / "scan_1.png"
    img.write_bytes(encode_png((np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8)))
    runner, app = CliRunner(), build_app()
    common = ["segmentation", "infer", "--config", str(TINY), "--ckpt", str(ckpt)]
    result = runner.invoke(app, [*common, str(img), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)[0]
    assert decode_gray((tmp_path / "o" / "scan_1_mask.png").read_bytes()).shape == (40, 48)
    assert 0.0 <= rec["confidence"] <= 1.0
    assert json.loads((tmp_path / "o" / "predictions.json").read_text()) == json.loads(result.stdout)
    bad = tmp_path / "bad.png"
    bad.write_text("hello")
    result = runner.invoke(app, [*common, str(bad), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and "not a readable" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stdout == ""


def test_pipeline_steps_keep_compiled_programs_under_the_run_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jax

    from clinrisk.usecases.segmentation.training import COMPILE_CACHE_ENV, use_compile_cache

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    assert not use_compile_cache(tmp_path / "xla")  # the environment's choice (here: the session's) wins
    assert jax.config.jax_compilation_cache_dir == before[0] and not (tmp_path / "xla").exists()
    monkeypatch.delenv(COMPILE_CACHE_ENV)
    try:
        assert use_compile_cache(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla") and (tmp_path / "xla").is_dir()
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
