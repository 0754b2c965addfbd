"""The report's text is derived from the numbers: change the numbers, the findings/advice change."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from clinrisk.config import EvaluateConfig
from clinrisk.evaluate import evaluate_predictions
from clinrisk.report import PLOTS, findings, recommendations, render_plots, render_report
from tests.model.eval_synth import synth_test_frame


@pytest.fixture(scope="module")
def result() -> dict:
    df, p = synth_test_frame(n_patients=900, seed=2)
    return evaluate_predictions(
        EvaluateConfig(bootstrap_replicates=20, top_k_errors=3), df, p, tau=0.1, p_t=0.1, seed=0
    )


def _set(res: dict, label: str, metric: str, value: float) -> None:
    res["overall"][label][metric] = {"value": value, "lo": value, "hi": value, "se": 0.0}


def test_report_quotes_this_runs_numbers(result: dict) -> None:
    md = render_report(result)
    assert f"{result['overall']['true']['auc']['value']:.3f}" in md
    fp = result["error_analysis"]["fp_decomposition"]
    assert f"{fp['label_noise_fp']} label-noise" in md
    worst = max(result["label_noise_blind_spot"], key=lambda r: r["gap"])
    assert f"largest for insurance = {worst['level']}" in md


def test_soft_label_advice_follows_oe_and_label_noise_share(result: dict) -> None:
    res = copy.deepcopy(result)
    _set(res, "true", "oe", 1.6)
    res["error_analysis"]["fp_decomposition"]["label_noise_share"] = 0.4
    assert any("E2 soft labels" in r for r in recommendations(res))
    res["error_analysis"]["fp_decomposition"]["label_noise_share"] = 0.05
    assert not any("E2 soft labels" in r for r in recommendations(res))
    _set(res, "true", "oe", 0.7)
    assert any("over-predicted" in r for r in recommendations(res))


def test_hba1c_missing_advice_depends_on_fn_dominance(result: dict) -> None:
    res = copy.deepcopy(result)
    rows = res["error_analysis"]["crosstabs"]["hba1c_in_window"]["rows"]
    no = next(r for r in rows if r["band"] == "no")
    no["fn_share_true"], no["positive_share_true"] = 0.6, 0.3
    assert any("LOCF" in r for r in recommendations(res))
    no["fn_share_true"] = 0.3
    assert not any("LOCF" in r for r in recommendations(res))


def test_flagged_slices_and_blind_spot_drive_findings(result: dict) -> None:
    res = copy.deepcopy(result)
    for s in res["slices"]:
        s["flagged"], s["flags"] = False, []
    assert any("No slice is flagged" in f for f in findings(res))
    res["slices"][0]["flagged"], res["slices"][0]["flags"] = (
        True,
        ["true labels: O/E 2.00 outside [0.8, 1.25]"],
    )
    text = " ".join(findings(res))
    assert f"Flagged slice {res['slices'][0]['slice']} = {res['slices'][0]['level']}" in text
    # Move the largest recorded-vs-true gap to another insurance level: the named group follows.
    bs = res["label_noise_blind_spot"]
    target = min(bs, key=lambda r: r["gap"])
    target["gap"] = 10.0
    assert f"largest for insurance = {target['level']}" in " ".join(findings(res))


def test_under_vs_over_prediction_wording_flips(result: dict) -> None:
    res = copy.deepcopy(result)
    _set(res, "true", "oe", 1.5)
    assert "under-predicts" in " ".join(findings(res))
    _set(res, "true", "oe", 0.7)
    assert "over-predicts" in " ".join(findings(res))


def test_plots_are_written_as_png(result: dict, tmp_path: Path) -> None:
    paths = render_plots(result, tmp_path / "plots")
    assert set(paths) == set(PLOTS)
    for p in paths.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    md = render_report(result, {k: f"plots/{v.name}" for k, v in paths.items()})
    assert all(f"(plots/{n}.png)" in md for n in PLOTS)
    assert np.isfinite(result["overall"]["true"]["auc"]["value"])
