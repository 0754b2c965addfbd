"""Lift and gains at top-k in the shared evaluation (metrics.json + report), by hand on a small frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clinrisk import metrics as M
from clinrisk.config import EvaluateConfig, load_config
from clinrisk.evaluate import evaluate_predictions, top_k
from clinrisk.report import render_report
from tests.model.eval_synth import synth_test_frame

REPO = Path(__file__).resolve().parents[2]


def _frame() -> tuple[pl.DataFrame, np.ndarray]:
    """Two periods of 10 entities, scores 0.9 .. 0.0 in entity order in both periods."""
    df = pl.DataFrame(
        {
            "patient_id": list(range(10)) * 2,
            "year": [2020] * 10 + [2021] * 10,
            "label_rec": [1, 0, 1, 0, 0, 0, 0, 0, 0, 1, *[0] * 9, 1],
            "eval_label_true": [1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, *[0] * 8, 1],
            "eval_oracle_risk": [0.5, 0.1, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.6] * 2,
        }
    )
    return df, np.array([0.9 - 0.1 * i for i in range(10)] * 2)


def test_lift_gains_per_period_pooled_by_hand() -> None:
    df, p = _frame()
    tk = top_k(df, p, [0.2, 1.0])
    rec20, rec100 = tk["recorded"]
    # top 2 of each year: entities 0, 1 -> recorded positives 1 (2020) + 0 (2021) = 1 of 4 worked
    assert rec20["rows_worked"] == 4 and rec20["positives"] == 1
    assert rec20["precision"] == pytest.approx(1 / 4)
    assert rec20["lift"] == pytest.approx((1 / 4) / (4 / 20))  # base rate 4 / 20
    assert rec20["gains"] == pytest.approx(1 / 4)
    # true labels: 2 (2020) + 1 (2021) = 3 of 4 worked, 6 positives in all
    tru20 = tk["true"][0]
    assert tru20["positives"] == 3
    assert tru20["lift"] == pytest.approx((3 / 4) / (6 / 20)) and tru20["gains"] == pytest.approx(3 / 6)
    # oracle lists are entities 9, 0 each year: expected 2 * 1.1; the model's: 2 * (0.5 + 0.1)
    assert tru20["capture_vs_oracle"] == pytest.approx(0.6 / 1.1)
    assert rec100["gains"] == 1.0 and rec100["lift"] == pytest.approx(1.0)
    assert tk["pooling"].startswith("per-period")


def test_k_is_per_period_not_over_the_pooled_frame() -> None:
    df, p = _frame()
    # f = 0.1 -> one row per year (2 in all), not the top 2 rows of the pooled frame (both from one year)
    (r,) = M.top_k_lift_gains(
        df.with_columns(pl.Series("s", p)), [0.1], score="s", label="label_rec", group="year",
        entity="patient_id",
    )  # fmt: skip
    assert r["rows_worked"] == 2 and r["positives"] == 1


def test_metrics_and_report_carry_top_k_only_when_fractions_are_declared() -> None:
    df, p = synth_test_frame(n_patients=300, seed=0)
    base = EvaluateConfig(bootstrap_replicates=10, top_k_errors=0)
    without = evaluate_predictions(base, df, p, tau=0.1, p_t=0.1, seed=1)
    assert "top_k" not in without and "Lift and gains" not in render_report(without)
    cfg = base.model_copy(update={"top_k_fractions": [0.05, 0.2]})
    res = evaluate_predictions(cfg, df, p, tau=0.1, p_t=0.1, seed=1)
    assert [r["fraction"] for r in res["top_k"]["recorded"]] == [0.05, 0.2]
    assert res["top_k"]["true"][1]["gains"] >= res["top_k"]["true"][0]["gains"]
    report = render_report(res)
    assert "## Lift and gains at top-k" in report and "| 5.0% |" in report and "| 20.0% |" in report


def test_fractions_default_from_the_usecase_and_are_checked() -> None:
    assert load_config(REPO / "configs" / "leads" / "tiny.yaml").evaluate.top_k_fractions == [
        0.01, 0.05, 0.1, 0.2,
    ]  # fmt: skip
    assert load_config(REPO / "configs" / "clinical" / "tiny.yaml").evaluate.top_k_fractions == []
    with pytest.raises(ValueError, match="top_k_fractions"):
        EvaluateConfig(top_k_fractions=[0.0])
