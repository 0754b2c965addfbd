"""Threshold selection on constructed risk/label sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from clinrisk import metrics
from clinrisk.config import ThresholdConfig
from clinrisk.errors import DataError
from clinrisk.threshold import (
    capacity_threshold,
    decision_curve,
    fbeta_threshold,
    nb_argmax,
    net_benefit,
    select_threshold,
    youden_threshold,
)


def calibrated(n: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """p ~ Beta(1, 11) (mean ≈ 0.083), y ~ Bernoulli(p): perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = rng.beta(1.0, 11.0, n)
    return p, (rng.random(n) < p).astype(np.float64)


def test_net_benefit_hand_example():
    p = np.array([0.9, 0.5, 0.2, 0.05])
    y = np.array([1, 0, 1, 0])
    # Alerts at p ≥ 0.1: rows 0-2 → TP 2, FP 1; NB = 2/4 − 1/4 · 0.1/0.9.
    assert net_benefit(p, y, 0.10) == pytest.approx(0.5 - 0.25 / 9)
    # τ = 0.6 with p_t = 0.1: one TP, no FP.
    assert net_benefit(p, y, 0.10, tau=0.6) == pytest.approx(0.25)


def test_soft_labels_and_weights_count_fractionally():
    p = np.array([0.8, 0.3])
    y = np.array([0.5, 0.0])
    # Row 0 is half TP, half FP; row 1 is FP.  NB = (0.5 − 1.5·(0.2/0.8)) / 2.
    assert net_benefit(p, y, 0.2) == pytest.approx((0.5 - 1.5 * 0.25) / 2)
    # Weight 3 on row 1 is the same as three copies of it.
    assert net_benefit(p, y, 0.2, w=[1, 3]) == pytest.approx(
        net_benefit(np.r_[p, 0.3, 0.3], np.r_[y, 0, 0], 0.2)
    )


def test_decision_curve_matches_evaluation_metrics():
    p, y = calibrated(20_000, 1)
    ours = decision_curve(p, y)
    theirs = metrics.net_benefit_curve(y, p)
    np.testing.assert_allclose(ours["model"], theirs["model"], atol=1e-12)
    np.testing.assert_allclose(ours["treat_all"], theirs["treat_all"], atol=1e-12)
    assert ours["threshold"][0] == pytest.approx(0.02) and ours["threshold"][-1] == pytest.approx(0.30)


def test_calibrated_model_argmax_at_p_t():
    p, y = calibrated()
    rec = select_threshold(p, y, ThresholdConfig())
    assert rec["value"] == 0.10 and rec["method"] == "net_benefit"
    assert abs(rec["argmax_tau"] - 0.10) <= 0.02 and rec["argmax_within_tolerance"] is True
    assert "consistent with calibration" in rec["reason"]
    assert f"{rec['net_benefit_at_p_t']:.4f}" in rec["reason"]
    assert rec["net_benefit"] > rec["treat_all_net_benefit"] and rec["net_benefit"] > 0
    assert len(rec["curve"]["threshold"]) == 29


def test_miscalibrated_model_is_flagged_not_moved():
    p, y = calibrated()
    rec = select_threshold(p / 2.5, y, ThresholdConfig())  # under-predicts risk 2.5×
    assert rec["value"] == 0.10  # τ stays at p_t: calibration must be fixed instead
    assert rec["argmax_within_tolerance"] is False
    assert rec["argmax_tau"] < 0.07
    assert "calibration is off" in rec["reason"]


def test_alert_capacity_raises_threshold_and_reports_nb_lost():
    p, y = calibrated()
    free = select_threshold(p, y, ThresholdConfig())
    assert free["alert_rate"] > 0.2
    rec = select_threshold(p, y, ThresholdConfig(alert_capacity=0.2))
    assert rec["method"] == "alert_capacity" and rec["value"] > 0.10
    assert rec["alert_rate"] <= 0.2 + 1e-12
    assert rec["nb_lost"] == pytest.approx(free["net_benefit"] - rec["net_benefit"])
    assert rec["nb_lost"] > 0
    assert "capacity" in rec["reason"]
    # A capacity above the alert rate changes nothing.
    same = select_threshold(p, y, ThresholdConfig(alert_capacity=0.9))
    assert same["value"] == 0.10 and same["method"] == "net_benefit" and same["nb_lost"] == 0.0


def test_capacity_threshold_with_ties():
    p = np.array([0.9, 0.9, 0.9, 0.5, 0.1])
    assert capacity_threshold(p, 0.6) == 0.9  # 3/5 alerted
    assert capacity_threshold(p, 0.8) == 0.5  # 4/5
    # Fewer than the tied top group allowed → nobody is alerted.
    tau = capacity_threshold(p, 0.4)
    assert tau > 0.9 and np.mean(p >= tau) == 0.0
    with pytest.raises(DataError, match="alert_capacity"):
        capacity_threshold(p, 0.0)


def test_descriptive_thresholds():
    p, y = calibrated()
    prev = y.mean()
    # For a calibrated model Youden's J is maximised near the prevalence, F1 near F1*/2.
    assert youden_threshold(p, y)["threshold"] == pytest.approx(prev, abs=0.02)
    f1 = fbeta_threshold(p, y, 1.0)
    assert f1["threshold"] == pytest.approx(f1["f"] / 2, abs=0.03)
    assert fbeta_threshold(p, y, 2.0)["threshold"] < f1["threshold"]


def test_nb_argmax_and_input_checks():
    p, y = calibrated(50_000, 3)
    tau, nb = nb_argmax(p, y, 0.2)
    assert abs(tau - 0.2) <= 0.03
    assert nb == pytest.approx(net_benefit(p, y, 0.2, tau=tau))
    with pytest.raises(DataError, match="length mismatch"):
        net_benefit(p, y[:-1], 0.1)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        net_benefit(p + 1, y, 0.1)
    with pytest.raises(DataError, match="threshold_probability"):
        net_benefit(p, y, 1.0)
