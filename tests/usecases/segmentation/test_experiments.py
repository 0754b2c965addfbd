"""Segmentation through the shared experiments machinery (`clinrisk experiments run|compare`): the use case's
experiment hooks train each arm and give per-image scores; the shared code pairs the runs on the validation
images, bootstraps by patient, and writes the Markdown + JSON report. Bad input: one `error:` line, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from clinrisk.experiments.units import paired_mean_diff
from tests.usecases.segmentation.conftest import REPO, TINY

TINY_SUITE = REPO / "configs" / "experiments" / "segmentation-tiny.yaml"


def _cli(*args: str) -> Any:
    from clinrisk.cli.app import build_app

    return CliRunner().invoke(build_app(), list(args))


def _error_line(result: Any) -> str:
    """The single `error: ...` line of a refused command (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


# ------------------------------------------------------------------------------------- the bootstrap itself


def test_the_patient_bootstrap_of_a_mean_difference_gives_verdict_ready_cis() -> None:
    groups = np.repeat(np.arange(10), 3)  # 10 patients x 3 images
    base = np.full(30, 0.5)
    better = base + 0.1 + 0.01 * (np.arange(30) % 3)
    d = paired_mean_diff(base, better, groups, n_boot=200, seed=1, alpha=0.05)
    assert d["diff"] == pytest.approx(0.11) and d["lo"] > 0 and d["p_value"] < 0.05
    noisy = base + np.where(groups % 2, 0.2, -0.2)  # a patient-level effect, half up, half down
    d2 = paired_mean_diff(base, noisy, groups, n_boot=200, seed=1, alpha=0.05)
    assert d2["lo"] < 0 < d2["hi"]
    assert paired_mean_diff(base, noisy, groups, n_boot=200, seed=1, alpha=0.05) == d2  # seeded
    # Resampling patients, not images: the same per-image differences with every image its own patient give
    # a narrower interval than when the three slices of a patient move together.
    per_image = paired_mean_diff(base, noisy, np.arange(30), n_boot=400, seed=1, alpha=0.05)
    assert (per_image["hi"] - per_image["lo"]) < (d2["hi"] - d2["lo"])


# --------------------------------------------------------------------------- the tiny suite, end to end


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`clinrisk experiments run configs/experiments/segmentation-tiny.yaml` (3 arms; promotion margin 0)."""
    pytest.importorskip("jax")
    out = tmp_path_factory.mktemp("seg-suite")
    r = _cli(
        "experiments", "run", str(TINY_SUITE), "--out", str(out), "--bootstrap", "50",
        "--set", "params.promote.min_improvement=0.0",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return {"out": out, "output": r.output, "report": json.loads((out / "comparison.json").read_text())}


def test_the_shared_machinery_runs_every_segmentation_arm_and_writes_the_report(
    tiny_suite: dict[str, Any],
) -> None:
    out, report = tiny_suite["out"], tiny_suite["report"]
    assert report["usecase"] == "segmentation" and report["suite"] == "segmentation-tiny"
    assert (report["unit"], report["group"]) == (
        "image_id",
        "patient_id",
    )  # paired on images, resampled by patient
    runs = {r["name"]: r for r in report["runs"]}
    assert list(runs) == ["baseline", "augment_cosine", "tversky_resunet"]
    assert all(r["status"] == "ok" for r in runs.values())
    # The tiny config: 8 patients x 2 slices, a quarter of the patients (2) in validation: 4 images.
    assert {(r["n_units"], r["n_groups"]) for r in runs.values()} == {(4, 2)}
    for name, r in runs.items():
        per_image = pl.read_parquet(Path(r["pipeline_dir"]) / "per_image.parquet")
        assert r["metrics"]["dice"] == pytest.approx(float(per_image["dice"].mean()))
        assert r["metrics"]["dice"] == pytest.approx(r["summary"]["val_dice"])  # the run's own figure
        if name == "baseline":
            assert "delta" not in r
            continue
        base = pl.read_parquet(Path(runs["baseline"]["pipeline_dir"]) / "per_image.parquet")
        for metric in ("dice", "iou"):
            d = r["delta"][metric]
            paired = per_image.join(base, on="image_id", suffix="_base")
            assert d["diff"] == pytest.approx(float((paired[metric] - paired[f"{metric}_base"]).mean()))
            assert d["lo"] <= d["diff"] <= d["hi"]
            assert d["verdict"] in ("better", "worse", "no clear change")
    md = (out / "comparison.md").read_text()
    assert "| tversky_resunet | + residual blocks, Tversky + BCE |" in md and "Δ dice [CI] verdict" in md
    assert (out / "comparison.html").is_file() and (out / "suite_result.json").is_file()
    assert len(report["winners"]) == 1 and report["winners"][0]["winner"] in runs
    assert "comparison: " in tiny_suite["output"]


def test_the_arms_share_one_registry_and_promote_against_the_champion_so_far(
    tiny_suite: dict[str, Any],
) -> None:
    from mlflow.tracking import MlflowClient

    runs = tiny_suite["report"]["runs"]
    uri = runs[0]["tracking_uri"]
    assert uri and all(r["tracking_uri"] == uri for r in runs)  # one store: the suite's
    assert [r["summary"]["model_version"] for r in runs] == ["1", "2", "3"]
    assert [r["model_uri"] for r in runs] == [f"models:/segmentation/{v}" for v in (1, 2, 3)]
    champion = runs[0]
    assert runs[0]["summary"]["promoted"]
    for r in runs[1:]:  # margin 0: promoted exactly when it matches or beats the champion so far
        assert r["summary"]["promoted"] == (r["summary"]["val_dice"] >= champion["summary"]["val_dice"])
        if r["summary"]["promoted"]:
            champion = r
    alias = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("segmentation", "champion")
    assert str(alias.version) == champion["summary"]["model_version"]


def test_compare_again_is_the_same_report_and_the_alias_is_the_same_path(
    tiny_suite: dict[str, Any], tmp_path: Path
) -> None:
    r = _cli("experiments", "compare", str(tiny_suite["out"]), "--out", str(tmp_path), "--bootstrap", "50")
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "comparison.json").read_text())
    first = tiny_suite["report"]
    assert [x.get("delta") for x in again["runs"]] == [x.get("delta") for x in first["runs"]]
    assert again["winners"] == first["winners"]
    # `clinrisk segmentation experiments` is a thin alias: its help names the shared command.
    h = _cli("segmentation", "experiments", "--help")
    assert h.exit_code == 0 and "clinrisk experiments run" in h.output


# ------------------------------------------------------------------------------------------- bad input


def _suite(tmp_path: Path, **changes: Any) -> Path:
    doc = yaml.safe_load(TINY_SUITE.read_text())
    doc["base_config"] = str(TINY)
    doc.update(changes)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_an_unknown_config_is_one_error_line(tmp_path: Path) -> None:
    line = _error_line(_cli("experiments", "run", str(_suite(tmp_path, base_config="configs/nope.yaml"))))
    assert "base_config configs/nope.yaml not found" in line
    bad_arm = [{"name": "baseline"}, {"name": "x", "overrides": ["params.train.nope=1"]}]
    r = _cli("experiments", "run", str(_suite(tmp_path, runs=bad_arm)), "--out", str(tmp_path))
    assert "invalid configuration" in _error_line(r) and "params.train.nope: unknown key" in r.output
    assert not (tmp_path / "runs").exists()
    line = _error_line(_cli("segmentation", "experiments", str(tmp_path / "missing.yaml")))
    assert "missing.yaml: not found" in line


def test_a_metric_or_runner_segmentation_does_not_have_is_one_error_line(tmp_path: Path) -> None:
    suite = _suite(tmp_path, winner={"rule": "best_with_ci", "metric": "brier"})
    line = _error_line(_cli("experiments", "run", str(suite), "--out", str(tmp_path)))
    assert "winner.metric 'brier' is not a metric of use case segmentation" in line
    line = _error_line(
        _cli("experiments", "run", str(_suite(tmp_path)), "--out", str(tmp_path), "--runner", "docker")
    )
    assert "segmentation experiments train in this process" in line
    line = _error_line(_cli("experiments", "run", str(_suite(tmp_path, winner={"metric": "dice_typo"}))))
    assert "winner.metric: unknown 'dice_typo'" in line


def test_runs_not_paired_on_the_same_images_are_one_error_line(
    tiny_suite: dict[str, Any], tmp_path: Path
) -> None:
    work = tmp_path / "suite"
    shutil.copytree(tiny_suite["out"], work, ignore=shutil.ignore_patterns("mlflow"))
    result = json.loads((work / "suite_result.json").read_text())
    result["tracking_uri"] = None  # the copy has no store
    arm = result["runs"][1]
    scores = pl.read_parquet(arm["predictions"])
    moved = work / "other_images.parquet"
    scores.with_columns(pl.col("image_id") + "-other").write_parquet(moved)  # other validation images
    arm["predictions"] = str(moved)
    (work / "suite_result.json").write_text(json.dumps(result))
    line = _error_line(_cli("experiments", "compare", str(work)))
    assert f"runs {arm['name']} and baseline were not scored on the same validation images" in line
    scores.head(2).write_parquet(moved)  # a subset of the images
    line = _error_line(_cli("experiments", "compare", str(work)))
    assert "(4 vs 2, 2 without a pair)" in line
    moved.write_bytes(b"not parquet")
    line = _error_line(_cli("experiments", "compare", str(work)))
    assert "unreadable per-image scores" in line


def test_the_shared_experiments_package_never_imports_the_segmentation_plugin() -> None:
    """The plugin is found through the use-case registry at run time; no import path leads to it."""
    from tests.test_import_graph import import_edges, module_files

    edges, _ = import_edges(module_files())
    seen: set[str] = set()
    todo = [m for m in edges if m == "clinrisk.experiments" or m.startswith("clinrisk.experiments.")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(edges.get(m, ()))
    assert "clinrisk.experiments.units" in seen
    assert sorted(m for m in seen if m.startswith("clinrisk.usecases.segmentation")) == []
