"""Evaluation orchestration on synthetic test splits, and end to end with a real model bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from clinrisk import metrics as M
from clinrisk.config import EvaluateConfig, load_config
from clinrisk.errors import DataError
from clinrisk.evaluate import (
    classification_metrics_data,
    evaluate_model,
    evaluate_predictions,
    load_test_frame,
)
from tests.model.eval_synth import EVAL_FEATURES, synth_test_frame, write_eval_bundle, write_eval_dataset

CFG = EvaluateConfig(bootstrap_replicates=30, top_k_errors=5)


@pytest.fixture(scope="module")
def synth() -> tuple[pl.DataFrame, np.ndarray]:
    return synth_test_frame(n_patients=1500, seed=0)


@pytest.fixture(scope="module")
def result(synth: tuple[pl.DataFrame, np.ndarray]) -> dict:
    df, p = synth
    return evaluate_predictions(CFG, df, p, tau=0.1, p_t=0.1, seed=1, window_years=3)


def test_overall_metrics_side_by_side_against_both_label_sets(synth, result) -> None:
    df, p = synth
    for name, col in (("recorded", "label_rec"), ("true", "eval_label_true")):
        y = df[col].to_numpy().astype(float)
        o = result["overall"][name]
        assert o["auc"]["value"] == pytest.approx(M.roc_auc(y, p))
        assert o["prevalence"]["value"] == pytest.approx(y.mean())
        assert o["auc"]["lo"] <= o["auc"]["value"] <= o["auc"]["hi"]
    # The synthetic recorded labels miss delayed diagnoses: true prevalence and true O/E are higher.
    assert (
        result["overall"]["true"]["prevalence"]["value"]
        > result["overall"]["recorded"]["prevalence"]["value"]
    )
    assert result["overall"]["true"]["oe"]["value"] > result["overall"]["recorded"]["oe"]["value"]


def test_oracle_ceiling_beats_the_model(synth, result) -> None:
    df, p = synth
    o = result["oracle"]
    po = df["eval_oracle_risk"].to_numpy().astype(float)
    assert o["expected_auc_oracle"] > o["expected_auc_model"]
    assert o["expected_auc_model"] == pytest.approx(M.expected_auc(p, po))
    assert o["excess_brier"] == pytest.approx(np.mean((p - po) ** 2), rel=1e-6)
    assert o["oracle_brier"] < result["overall"]["true"]["brier"]["value"]
    assert "expected_auc" in result["overall"]["true"]


def test_oracle_gaps_are_like_for_like(synth, result) -> None:
    df, p = synth
    o = result["oracle"]
    po = df["eval_oracle_risk"].to_numpy().astype(float)
    y = df["eval_label_true"].to_numpy().astype(float)
    assert o["auc_gap_expected"] == pytest.approx(M.expected_auc(po, po) - M.expected_auc(p, po))
    assert o["auc_gap_realised"] == pytest.approx(M.roc_auc(y, po) - M.roc_auc(y, p))
    assert o["model_auc_true"] == pytest.approx(result["overall"]["true"]["auc"]["value"])
    h = result["headline"]
    assert h["auc_gap_expected"] == o["auc_gap_expected"] and h["auc_gap_realised"] == o["auc_gap_realised"]
    from clinrisk.report import render_report

    md = render_report(result, {})
    assert "expected vs expected" in md and "realised vs realised" in md
    assert f"{o['auc_gap_realised']:.3f}" in md and f"{o['auc_gap_expected']:.3f}" in md


def test_slices_cover_insurance_ethnicity_age_sex_and_blind_spot_hits_uninsured(result) -> None:
    got = {(s["slice"], s["level"]) for s in result["slices"]}
    assert {
        ("insurance", "uninsured"),
        ("ethnicity", "Black"),
        ("age_band", "<45"),
        ("age_band", ">=65"),
    } <= got
    assert {("sex", "F"), ("sex", "M")} <= got
    ins = [s for s in result["slices"] if s["slice"] == "insurance"]
    assert sum(s["n_rows"] for s in ins) == result["n_rows"]
    bs = {r["level"]: r for r in result["label_noise_blind_spot"]}
    # Uninsured diagnoses are delayed most: biggest recorded-vs-true O/E gap.
    assert max(bs, key=lambda k: bs[k]["gap"]) == "uninsured"


def test_miscalibrated_slice_is_flagged_with_reason(synth) -> None:
    df, p = synth
    q = p.copy()
    black = (df["ethnicity"].cast(pl.String) == "Black").to_numpy()
    q[black] = q[black] * 0.3  # severe under-prediction in one slice only
    res = evaluate_predictions(CFG, df, q, tau=0.1, p_t=0.1, seed=1)
    s = next(s for s in res["slices"] if s["slice"] == "ethnicity" and s["level"] == "Black")
    assert s["flagged"] and any(f.startswith("recorded labels: O/E") for f in s["flags"])
    white = next(s for s in res["slices"] if s["slice"] == "ethnicity" and s["level"] == "White")
    assert not any(f.startswith("recorded labels: O/E") for f in white["flags"])


def test_slice_calibration_flags_are_absolute_not_relative_to_overall(synth) -> None:
    # every row under-predicted alike: overall O/E is off too, so a rule relative to it would flag nothing
    df, p = synth
    y_true = df["eval_label_true"].to_numpy()
    p = np.clip(p * y_true.sum() / p.sum(), 0.0, 1.0)  # calibrated in the large on true labels
    res = evaluate_predictions(CFG, df, p * 0.6, tau=0.1, p_t=0.1, seed=1)
    assert res["overall"]["true"]["oe"]["value"] > 1.25
    white = next(s for s in res["slices"] if s["slice"] == "ethnicity" and s["level"] == "White")
    oe = white["true"]["oe"]
    assert oe["value"] > 1.25 and oe["lo"] > 1.0
    assert any(f.startswith("true labels: O/E") for f in white["flags"])
    # well calibrated: O/E inside the bounds, nothing flagged on O/E
    ok = evaluate_predictions(CFG, df, p, tau=0.1, p_t=0.1, seed=1)
    w_ok = next(s for s in ok["slices"] if s["slice"] == "ethnicity" and s["level"] == "White")
    assert not any(f.startswith("true labels: O/E") for f in w_ok["flags"])


def test_slice_auc_difference_has_a_paired_ci_and_flags_a_degraded_slice(synth, result) -> None:
    df, p = synth
    for s in result["slices"]:
        if "auc" in s.get("true", {}):
            d = s["true"]["auc_diff"]
            assert d["lo"] <= d["value"] <= d["hi"]
            assert d["value"] == pytest.approx(
                s["true"]["auc"]["value"] - result["overall"]["true"]["auc"]["value"]
            )
    q = p.copy()
    female = (df["sex"].cast(pl.String) == "F").to_numpy()
    q[female] = np.random.default_rng(0).permutation(q[female])  # no ranking left among women
    res = evaluate_predictions(CFG, df, q, tau=0.1, p_t=0.1, seed=1)
    f = next(s for s in res["slices"] if s["slice"] == "sex" and s["level"] == "F")
    d = f["true"]["auc_diff"]
    assert d["value"] < -0.03 and d["hi"] < 0
    assert any("Δ vs overall" in x for x in f["flags"])


def test_duplicate_and_empty_slices_are_dropped() -> None:
    from clinrisk.evaluate import plan_slices

    age = np.array([30, 50, 66, 70, 80, 40, 55, 67], dtype=np.float64)
    df = pl.DataFrame(
        {
            "age": age,
            "insurance": ["commercial" if a < 65 else "medicare" for a in age],
            "sex": ["F", "M"] * 4,
            "sex_copy": ["F", "M"] * 4,
        }
    )
    cfg = EvaluateConfig(slice_columns=["age_band", "insurance", "sex", "sex_copy"])
    kept, dropped = plan_slices(df, cfg)
    names = [f"{c}={lvl}" for c, lvl, _ in kept]
    assert "insurance=medicare" not in names and "age_band=>=65" in names
    reasons = {f"{d['slice']}={d['level']}": d["reason"] for d in dropped}
    assert reasons["insurance=medicare"] == "same rows as age_band=>=65"
    assert reasons["sex_copy=F"] == "same rows as sex=F"
    assert "insurance=commercial" in names  # <65 spans two age bands: not a duplicate
    assert all(m.any() for _, _, m in kept)


def test_error_analysis_counts_are_consistent(synth, result) -> None:
    df, p = synth
    alert = p >= 0.1
    yr = df["label_rec"].to_numpy()
    yt = df["eval_label_true"].to_numpy()
    fp = result["error_analysis"]["fp_decomposition"]
    assert fp["fp_recorded"] == int(np.sum(alert & (yr == 0)))
    assert fp["label_noise_fp"] + fp["real_fp"] == fp["fp_recorded"]
    assert fp["label_noise_fp"] == int(np.sum(alert & (yr == 0) & (yt == 1)))
    ct = result["error_analysis"]["crosstabs"]
    assert set(ct) == {"hba1c_in_window", "years_since_last_hba1c", "visits", "bmi", "undiagnosed_prevalent"}
    assert ct["hba1c_in_window"]["column"] == "hba1c_n_3y"
    for dim in ct.values():
        assert sum(r["fn_true"] for r in dim["rows"]) == fp["fn_true"]
        assert sum(r["n_rows"] for r in dim["rows"]) == result["n_rows"]
    fps = result["top_errors"]["false_positives"]
    assert len(fps) == 5 and all(r["label_rec"] == 0 for r in fps)
    assert [r["probability"] for r in fps] == sorted((r["probability"] for r in fps), reverse=True)


def test_patient_level_and_kfp_data(result) -> None:
    pl_ = result["patient_level"]
    assert pl_["sensitivity_1"]["value"] <= pl_["sensitivity_2"]["value"] <= pl_["sensitivity_3"]["value"]
    kfp = classification_metrics_data(result, "true")
    assert len(kfp["roc"]["fpr"]) <= 200
    assert sum(map(sum, kfp["confusion_matrix"]["matrix"])) == result["n_rows"]
    with pytest.raises(DataError, match="labels"):
        classification_metrics_data(result, "nope")


def test_bad_probabilities_are_rejected(synth) -> None:
    df, p = synth
    with pytest.raises(DataError, match="probability"):
        evaluate_predictions(CFG, df, p[:-1], tau=0.1, p_t=0.1)
    with pytest.raises(DataError, match="probability"):
        evaluate_predictions(CFG, df, p + 2, tau=0.1, p_t=0.1)


# ------------------------------------------------------------------------------------ end to end


def test_evaluate_model_end_to_end_and_cli(tmp_path: Path) -> None:
    # A model trained on one synthetic population, evaluated on another one's test rows.
    train_df, _ = synth_test_frame(n_patients=1200, seed=3)
    test_df, _ = synth_test_frame(n_patients=800, seed=4)
    feats = write_eval_dataset(tmp_path, test_df)
    bundle = write_eval_bundle(tmp_path, train_df)
    cfg = load_config(None, ["evaluate.bootstrap_replicates=20", "evaluate.top_k_errors=3"])
    out = tmp_path / "evaluation"
    res = evaluate_model(cfg, bundle, feats, out)
    for rel in (
        "metrics.json",
        "report.md",
        "predictions.parquet",
        *(f"plots/{n}.png" for n in ("roc", "pr", "calibration", "net_benefit", "slices")),
    ):
        assert (out / rel).is_file(), rel
    saved = json.loads((out / "metrics.json").read_text())  # strict JSON (no NaN)
    assert saved["headline"]["true_auc"] == pytest.approx(res["headline"]["true_auc"])
    assert res["threshold"]["method"] == "net_benefit" and res["tau"] == 0.1
    preds = pl.read_parquet(out / "predictions.parquet")
    assert preds.columns == ["patient_id", "year", "probability", "label_rec", "eval_label_true"]
    assert preds.height == load_test_frame(feats).height
    top = res["top_errors"]["false_positives"][0]["top_contributions"]
    assert len(top) == 5 and {c["feature"] for c in top} <= set(EVAL_FEATURES)
    assert "insurance" in (out / "report.md").read_text()

    from clinrisk.cli.app import build_app

    cli_out = tmp_path / "cli_eval"
    r = CliRunner().invoke(
        build_app(),
        [
            "evaluate",
            "--set",
            "evaluate.bootstrap_replicates=10",
            "--bundle",
            str(bundle),
            "--features",
            str(feats),
            "--out",
            str(cli_out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "auc" in r.output and (cli_out / "metrics.json").is_file()


def test_failure_publishes_nothing(tmp_path: Path) -> None:
    df, _ = synth_test_frame(n_patients=200, seed=5)
    feats = write_eval_dataset(tmp_path, df.drop("eval_oracle_risk"))
    with pytest.raises(DataError, match="eval_oracle_risk"):
        load_test_frame(feats)
    from clinrisk.cli.app import build_app

    out = tmp_path / "evaluation"
    r = CliRunner().invoke(
        build_app(),
        ["evaluate", "--bundle", str(tmp_path / "nobundle"), "--features", str(feats), "--out", str(out)],
    )
    assert r.exit_code == 2 and "error:" in r.output
    assert not out.exists()


def test_evaluation_reads_only_its_columns_and_scores_in_batches(tmp_path: Path) -> None:
    """Columns selection dropped stay on disk; the result is the one evaluating every column gives, and
    batched scoring returns exactly one call's numbers."""
    from clinrisk.bundle import load_bundle
    from clinrisk.evaluate import evaluate_bundle, evaluation_columns, predict_in_batches

    train_df, _ = synth_test_frame(n_patients=600, seed=6)
    test_df, _ = synth_test_frame(n_patients=400, seed=7)
    feats = write_eval_dataset(
        tmp_path, test_df.with_columns(pl.lit(1.5, pl.Float32).alias("unselected_lab_3y"))
    )
    bundle = load_bundle(write_eval_bundle(tmp_path, train_df))
    cfg = load_config(None, ["evaluate.bootstrap_replicates=10", "evaluate.top_k_errors=3"])
    full = load_test_frame(feats)
    lean = load_test_frame(feats, keep=evaluation_columns(cfg.evaluate, bundle.feature_names))
    assert "unselected_lab_3y" in full.columns and "unselected_lab_3y" not in lean.columns
    assert {*EVAL_FEATURES, "patient_id", "eval_oracle_risk", "eval_onset_year"} <= set(lean.columns)
    assert lean.height == full.height
    p_one = np.asarray(bundle.predict_proba(full), dtype=np.float64)
    np.testing.assert_array_equal(predict_in_batches(bundle, lean, rows=7), p_one)
    cats = {"insurance": ["commercial", "medicaid", "medicare", "uninsured", "__OTHER__"]}
    res_full, _ = evaluate_bundle(cfg, bundle, full, cats)
    res_lean, _ = evaluate_bundle(cfg, bundle, lean, cats)
    assert json.dumps(res_lean, default=str) == json.dumps(res_full, default=str)


def test_split_scored_shard_by_shard_keeps_no_model_features_and_gives_the_same_evaluation(
    tmp_path: Path,
) -> None:
    """score_split reads one shard at a time and keeps only what evaluation uses besides scoring: the
    frame is the whole-frame read without the model-only features, the scores and the whole evaluation
    (SHAP of the listed errors included, read back by position) are identical, and rows() returns any
    positions across shards in the order asked."""
    from clinrisk.bundle import load_bundle
    from clinrisk.evaluate import evaluate_bundle, evaluate_scored, evaluation_columns, score_split

    train_df, _ = synth_test_frame(n_patients=600, seed=6)
    test_df, _ = synth_test_frame(n_patients=400, seed=7)
    feats = write_eval_dataset(tmp_path, test_df)
    bundle = load_bundle(write_eval_bundle(tmp_path, train_df))
    cfg = load_config(None, ["evaluate.bootstrap_replicates=10", "evaluate.top_k_errors=3"])
    whole = load_test_frame(feats, keep=evaluation_columns(cfg.evaluate, bundle.feature_names))
    scored = score_split(feats, bundle, cfg.evaluate)

    model_only = [
        c for c in bundle.feature_names if c not in evaluation_columns(cfg.evaluate, ())(whole.columns)
    ]
    assert model_only, "the synthetic model must have features evaluation does not otherwise read"
    assert not set(model_only) & set(scored.frame.columns)
    assert_frame_equal(scored.frame, whole.drop(model_only))
    np.testing.assert_array_equal(scored.p, np.asarray(bundle.predict_proba(whole), dtype=np.float64))

    cats = {"insurance": ["commercial", "medicaid", "medicare", "uninsured", "__OTHER__"]}
    res_whole, _ = evaluate_bundle(cfg, bundle, whole, cats)
    res_scored = evaluate_scored(cfg, bundle, scored, cats)
    assert any("top_contributions" in r for r in res_scored["top_errors"]["false_positives"])
    assert json.dumps(res_scored, default=str) == json.dumps(res_whole, default=str)

    idx = np.array([whole.height - 1, 0, 5, whole.height // 2, 1])
    assert_frame_equal(scored.rows(idx), whole[idx].select(scored.columns))
