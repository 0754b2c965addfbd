"""Beta calibration (Kull, Silva Filho & Flach 2017) beside none / logistic / isotonic (issue #16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clinrisk.calibration import (
    apply_calibration,
    fit_beta,
    fit_calibration,
    select_calibration,
    sigmoid,
    validate_calibration,
)
from clinrisk.config import load_config
from clinrisk.errors import DataError
from clinrisk.metrics import average_precision, roc_auc
from clinrisk.seed_suite import expected_calibration_error


def _beta_truth(n: int, c: float, a: float, b: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Model logits z whose true risk is σ(c + a·ln s − b·ln(1 − s)), s = σ(z): a beta-family miscalibration."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-2.0, 1.3, n)
    s = sigmoid(z)
    p = sigmoid(c + a * np.log(s) - b * np.log1p(-s))
    return z, (rng.random(n) < p).astype(np.float64)


def test_identity_when_scores_are_calibrated() -> None:
    z, y = _beta_truth(40_000, 0.0, 1.0, 1.0, seed=1)
    c, a, b = fit_beta(z, y)
    assert (c, a, b) == pytest.approx((0.0, 1.0, 1.0), abs=0.12)


def test_recovers_parameters_and_fixes_what_logistic_cannot() -> None:
    """a ≠ b bends the map asymmetrically; a logistic map on the logit is symmetric and cannot follow it."""
    z, y = _beta_truth(60_000, 0.8, 1.6, 0.6, seed=2)
    cal = fit_calibration(z, y, method="beta")
    validate_calibration(cal)
    assert (cal["c"], cal["a"], cal["b"]) == pytest.approx((0.8, 1.6, 0.6), abs=0.15)
    z2, y2 = _beta_truth(60_000, 0.8, 1.6, 0.6, seed=3)  # fresh rows from the same process
    p_none, p_beta = sigmoid(z2), apply_calibration(cal, z2)
    p_log = apply_calibration(fit_calibration(z, y, method="logistic"), z2)
    ece = {
        k: expected_calibration_error(y2, p) for k, p in (("none", p_none), ("beta", p_beta), ("log", p_log))
    }
    oe = {k: float(y2.sum() / p.sum()) for k, p in (("none", p_none), ("beta", p_beta))}
    assert ece["beta"] < 0.25 * ece["none"]
    assert ece["beta"] < ece["log"]
    assert abs(oe["beta"] - 1) < 0.03 < abs(oe["none"] - 1)
    # monotone: ranking, hence AUC and AP, is that of the uncalibrated scores
    assert abs(roc_auc(y2, p_beta) - roc_auc(y2, p_none)) < 1e-9
    assert abs(average_precision(y2, p_beta) - average_precision(y2, p_none)) < 1e-9


def test_negative_coefficient_is_dropped_so_the_map_stays_monotone() -> None:
    """True b < 0: the unconstrained fit is not monotone; as in the paper b is set to 0 and a refitted."""
    z, y = _beta_truth(40_000, 0.0, 2.0, -0.5, seed=4)
    cal = fit_calibration(z, y, method="beta")
    assert cal["b"] == 0.0 and cal["a"] > 0
    grid = np.linspace(-12, 8, 2001)
    assert np.all(np.diff(apply_calibration(cal, grid)) >= 0)
    assert abs(roc_auc(y, apply_calibration(cal, z)) - roc_auc(y, sigmoid(z))) < 1e-9


def test_flat_scores_and_bad_parameters_are_refused() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(-2, 1, 5000)
    y = (rng.random(5000) < 0.1).astype(np.float64)  # labels independent of the scores
    try:
        _, a, b = fit_beta(z, y)
        assert a >= 0 and b >= 0 and (a > 0 or b > 0)
    except DataError as exc:
        assert "flat" in str(exc)
    for bad in (
        {"method": "beta", "c": 0.0, "a": -1.0, "b": 1.0},
        {"method": "beta", "c": 0.0, "a": 0, "b": 0},
    ):
        with pytest.raises(DataError, match="monotone"):
            validate_calibration(bad)
    with pytest.raises(DataError, match="'c'"):
        validate_calibration({"method": "beta", "a": 1.0, "b": 1.0})


def test_selectable_by_config_and_a_select_candidate() -> None:
    assert load_config(None, ["train.calibration=beta"]).train.calibration == "beta"
    z, y = _beta_truth(20_000, 0.8, 1.6, 0.6, seed=6)
    pid = np.repeat(np.arange(4000, dtype=np.int64), 5)
    sel = select_calibration(z, y, None, pid)["selection"]
    assert "beta" in sel["held_out"]
    assert sel["held_out"]["beta"]["brier"] < sel["held_out"]["none"]["brier"]


def test_beta_is_frozen_in_the_bundle(synthetic_features_dir: Path, tmp_path: Path) -> None:
    """train.calibration=beta: fitted on the calibration part, stored in calibration.json, applied on load."""
    import json

    import polars as pl

    from clinrisk.bundle import features_to_matrix, load_bundle
    from clinrisk.io import list_shards
    from clinrisk.train import train_model
    from tests.model.conftest import small_config

    out = tmp_path / "bundle"
    train_model(small_config(None, "train.calibration=beta"), synthetic_features_dir, out)
    stored = json.loads((out / "calibration.json").read_text())
    assert stored["method"] == "beta" and stored["requested"] == "beta"
    bundle = load_bundle(out)
    frame = pl.read_parquet(str(list_shards(synthetic_features_dir)[0]))
    X = features_to_matrix(frame, bundle.feature_names, bundle.categories)
    z = bundle.predict_raw(frame) - np.log(bundle.positive_class_weight)
    np.testing.assert_allclose(bundle.predict_proba(X), apply_calibration(stored, z), rtol=0, atol=0)


def test_patient_fold_expr_matches_patient_fold() -> None:
    """The labels' calibration rows (polars) and clinrisk.train's calibration part (numpy) are the same cut."""
    import polars as pl

    from clinrisk.calibration import VALIDATION_PART_SALT, patient_fold, patient_fold_expr

    ids = np.concatenate(
        [np.arange(-50, 5000, dtype=np.int64), np.array([2**62, -(2**63) + 1, 2**63 - 1], dtype=np.int64)]
    )
    for folds, salt in ((2, VALIDATION_PART_SALT), (5, 0), (3, 7)):
        want = patient_fold(ids, folds, salt=salt)
        got = pl.DataFrame({"patient_id": ids}).select(patient_fold_expr(folds, salt=salt)).to_series()
        assert np.array_equal(got.to_numpy(), want), (folds, salt)
