"""Uncertainty suite invariant (issue #8): E2 with the delay pmf delta_0 on severity-"none" data is E0.

Runs the pipeline's own stage functions (generate → validate → features → train) on a tiny population,
once with ``labels.strategy=E0`` and once with ``E2`` + ``assumed_delay_pmf = delta_0``, and checks that
labels, model predictions and the suite comparison's test metrics (true and recorded labels) agree. A control with the default pmf on the same data
shows the comparison can tell the strategies apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clinrisk.config import ClinriskConfig, load_config

DELTA_0 = "labels.assumed_delay_pmf=[0.0,1.0,0.0,0.0,0.0]"
BASE = [
    "run.seed=5",
    "run.workers=1",
    "generate.n_patients=1200",
    "generate.n_shards=2",
    "generate.block_size=250",
    "generate.chunk_patients=2000",
    "generate.calibration_patients=4000",
    "generate.delay_severity=none",
    "labels.assumed_coding_drift_per_year=0",  # with no assumed delay at all, E2 is algebraically E0
    "split.temporal=false",
    "select.enabled=false",
    "train.num_boost_round=60",
    "train.early_stopping_rounds=10",
]
KEYS = ["patient_id", "year"]


def _cfg(tmp: Path, *extra: str) -> ClinriskConfig:
    return load_config(None, [*BASE, f"run.output_dir={tmp}", *extra])


def _frame(features_dir: Path) -> pl.DataFrame:
    from clinrisk.io import list_shards

    return pl.read_parquet([str(f) for f in list_shards(features_dir)]).sort(KEYS)


@pytest.fixture(scope="module")
def none_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Validated severity-"none" data (and truth) shared by every arm."""
    from clinrisk.generate import generate_dataset
    from clinrisk.validate import validate_dataset

    root = tmp_path_factory.mktemp("e2none")
    cfg = _cfg(root)
    generate_dataset(cfg, root / "raw", workers=1, progress=False)
    validate_dataset(cfg, root / "raw", root / "val", workers=1)
    return root, root / "val" / "validated"


def test_e2_with_delta0_pmf_matches_e0_end_to_end(none_data: tuple[Path, Path]) -> None:
    from clinrisk.bundle import load_bundle
    from clinrisk.evaluate import load_test_frame, predictions_frame
    from clinrisk.experiments import point_metrics
    from clinrisk.features_stage import build_features_dataset
    from clinrisk.train import train_model

    root, validated = none_data
    truth = root / "raw" / "truth"
    arms = {"E0": _cfg(root, "labels.strategy=E0", DELTA_0), "E2": _cfg(root, "labels.strategy=E2", DELTA_0)}
    frames, preds, metrics, meta = {}, {}, {}, {}
    for name, cfg in arms.items():
        feats, bundle_dir = root / f"features_{name}", root / f"bundle_{name}"
        build_features_dataset(cfg, validated, feats, truth, workers=1)
        meta[name] = train_model(cfg, feats, bundle_dir)["metadata"]
        frames[name] = _frame(feats)
        test = load_test_frame(feats).sort(KEYS)
        preds[name] = np.asarray(load_bundle(bundle_dir).predict_proba(test), dtype=np.float64)
        metrics[name] = point_metrics(
            predictions_frame(test, preds[name]), cfg.threshold.threshold_probability
        )

    f0, f2 = frames["E0"], frames["E2"]
    assert f0.height > 1000 and 0 < f0["label"].sum() < f0.height  # real rows, both classes
    # labels: same rows, E2's expected label is exactly the recorded label, weights all 1
    assert f2.select(KEYS).equals(f0.select(KEYS))
    np.testing.assert_array_equal(f2["label"].to_numpy(), f0["label_rec"].cast(pl.Float32).to_numpy())
    np.testing.assert_array_equal(f2["label"].to_numpy(), f0["label"].to_numpy())
    np.testing.assert_array_equal(f2["sample_weight"].to_numpy(), f0["sample_weight"].to_numpy())
    # model: E2 trains with cross_entropy, E0 with binary; on hard labels both are the log-loss with the
    # same gradients, so the same trees and the same probabilities (up to float rounding)
    assert (meta["E0"]["objective"], meta["E2"]["objective"]) == ("binary", "cross_entropy")
    assert not meta["E2"]["soft_labels"]
    assert meta["E2"]["best_iteration"] == meta["E0"]["best_iteration"]
    np.testing.assert_allclose(preds["E2"], preds["E0"], rtol=0, atol=1e-9)
    # metrics the suite comparison reports (true and recorded labels) agree
    for lab in ("true", "recorded"):
        for k, v in metrics["E0"][lab].items():
            assert metrics["E2"][lab][k] == pytest.approx(v, rel=1e-7, abs=1e-9, nan_ok=True), (lab, k)
    assert metrics["E0"]["true"]["auc"] > 0.6  # a real model, not two constant predictors


def test_e2_with_default_pmf_differs_on_the_same_data(none_data: tuple[Path, Path]) -> None:
    """Control: the equality above is not vacuous — a non-degenerate pmf yields soft labels."""
    from clinrisk.features_stage import build_features_dataset

    root, validated = none_data
    truth = root / "raw" / "truth"
    cfg = _cfg(root, "labels.strategy=E2", "labels.assumed_delay_pmf=[0.05,0.40,0.30,0.15,0.10]")
    build_features_dataset(cfg, validated, root / "features_E2_default", truth, workers=1)
    f = _frame(root / "features_E2_default")
    y = f["label"].to_numpy()
    soft = (y > 0) & (y < 1)
    assert soft.any()
    assert not np.array_equal(y, f["label_rec"].cast(pl.Float32).to_numpy())
