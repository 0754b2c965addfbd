"""The experiments runner: one shared MLflow store, promotion by margin, paired patient-bootstrap deltas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clinrisk.usecases.segmentation.experiments import patient_bootstrap

TINY = Path(__file__).resolve().parents[3] / "configs" / "segmentation" / "tiny.yaml"


def _frame(values: list[float], patients: list[int]) -> pl.DataFrame:
    n = len(values)
    return pl.DataFrame({"image_id": [f"i{i}" for i in range(n)], "patient_id": patients, "dice": values})


def test_patient_bootstrap_delta_and_verdicts() -> None:
    patients = [i // 3 for i in range(30)]
    base = _frame([0.5] * 30, patients)
    better = _frame([0.5 + 0.1 + 0.01 * (i % 3) for i in range(30)], patients)
    d = patient_bootstrap(base, better, "dice", 200, 1)
    assert d["delta"] == pytest.approx(0.11) and d["ci_low"] > 0 and d["verdict"] == "better"
    noisy = _frame([0.5 + (0.2 if p % 2 else -0.2) for p in patients], patients)
    d = patient_bootstrap(base, noisy, "dice", 200, 1)
    assert d["ci_low"] < 0 < d["ci_high"] and d["verdict"] == "no clear change"
    assert patient_bootstrap(base, noisy, "dice", 200, 1) == d  # seeded
    with pytest.raises(ValueError, match="different images"):
        patient_bootstrap(base, noisy.head(10), "dice", 50, 1)


def test_experiments_share_one_registry_and_promote_only_past_the_margin(tmp_path: Path) -> None:
    pytest.importorskip("jax")
    from mlflow.tracking import MlflowClient

    from clinrisk.usecases.segmentation.experiments import run_experiments

    # The two differ in epochs only, so they share one compiled train step (and the session's): seconds.
    experiments = "{first: {change: base, set: {}}, second: {change: one more epoch, set: {train.epochs: 2}}}"
    report = run_experiments(
        TINY,
        [
            f"run.output_dir={tmp_path}",
            "params.train.epochs=1",
            f"params.experiments={experiments}",
            "params.promote.min_improvement=0.0",
        ],
    )
    first, second = report["experiments"]
    assert first["promoted"] and first["model_version"] == "1"
    assert second["model_version"] == "2"  # the same registered model: one store for both
    # the champion (v1) is re-scored on the same validation images, so the rule is exactly this:
    assert second["promoted"] == (second["val_dice"] >= first["val_dice"])
    d = second["dice_vs_baseline"]
    assert d["delta"] == pytest.approx(second["val_dice"] - first["val_dice"])
    out = Path(report["report_dir"])
    saved = json.loads((out / "comparison.json").read_text())
    assert [e["experiment"] for e in saved["experiments"]] == ["first", "second"]
    assert "| second | one more epoch |" in (out / "comparison.md").read_text()
    uri = f"sqlite:///{(tmp_path / 'seg-tiny' / 'mlflow' / 'mlflow.db').resolve()}"
    champion = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("segmentation", "champion")
    assert str(champion.version) == ("2" if second["promoted"] else "1")
    assert np.isfinite(first["val_dice"])
