"""Drift: PSI against hand-computed values, binning conventions, and the drift job on real bundles."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clinrisk.config import MonitoringConfig, load_config
from clinrisk.drift import (
    OK,
    RETRAIN,
    categorical_shares,
    drift_report,
    ks_at_edges,
    numeric_bin_shares,
    prometheus_text,
    psi,
    run_drift_job,
    standardisation_weights,
)
from clinrisk.errors import DataError
from clinrisk.request_log import RequestLogger


def test_psi_hand_computed() -> None:
    # (0.5−0.25)ln(0.5/0.25) + (0.5−0.75)ln(0.5/0.75) = 0.25·ln2 + 0.25·ln1.5
    assert psi([0.25, 0.75], [0.5, 0.5]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    # symmetric in its arguments, and an empty current bin stays finite through the floor
    assert psi([0.1, 0.9], [0.3, 0.7]) == pytest.approx(psi([0.3, 0.7], [0.1, 0.9]))
    assert math.isfinite(psi([0.5, 0.5], [1.0, 0.0]))
    with pytest.raises(DataError):
        psi([0.5, 0.5], [1.0])


def test_bin_conventions_match_reference() -> None:
    # Bins (-inf, 1), [1, 2), [2, inf) + missing: values exactly on an edge go right, as in train.py.
    s = numeric_bin_shares([0.5, 1.0, 1.5, 2.0, 3.0, float("nan")], [1.0, 2.0])
    np.testing.assert_allclose(s, [1 / 6, 2 / 6, 2 / 6, 1 / 6])
    c = categorical_shares(pl.Series(["F", "M", "X", None]), ["F", "M", "__OTHER__"])
    np.testing.assert_allclose(c, [0.25, 0.25, 0.25, 0.25])
    codes = categorical_shares(pl.Series([0, 0, 1, None]), ["F", "M"])
    np.testing.assert_allclose(codes, [0.5, 0.25, 0.25])
    # reference deciles of U(0,1) vs a current sample that is all above 0.5: KS = 0.5 at edge 0.5
    edges = np.linspace(0.1, 0.9, 9)
    assert ks_at_edges(np.full(10, 0.1), np.linspace(0.55, 0.99, 100), edges) == pytest.approx(0.5)


def _reference(rng: np.random.Generator) -> dict:
    x = rng.normal(0, 1, 20000)
    edges = np.quantile(x, np.linspace(0.1, 0.9, 9))
    score = rng.beta(2, 20, 20000)
    sedges = np.quantile(score, np.linspace(0.1, 0.9, 9))
    return {
        "features": {
            "x": {
                "type": "numeric",
                "edges": edges.tolist(),
                "shares": [0.1] * 10,
                "missing_share": 0.0,
                "min": float(x.min()),
                "max": float(x.max()),
                "mean": 0.0,
            },
            "sex": {"type": "categorical", "levels": ["F", "M"], "shares": [0.5, 0.5], "missing_share": 0.0},
        },
        "score": {"edges": sedges.tolist(), "shares": [0.1] * 10, "mean": float(score.mean())},
    }


def test_drift_report_shifted_vs_unshifted() -> None:
    rng = np.random.default_rng(1)
    ref = _reference(rng)
    mc = MonitoringConfig(min_drifted_features=1)
    same = pl.DataFrame(
        {
            "x": rng.normal(0, 1, 5000),
            "sex": rng.choice(["F", "M"], 5000),
            "probability": rng.beta(2, 20, 5000),
        }
    )
    rep = drift_report(ref, same, mc)
    assert rep["decision"] == OK, rep["reasons"]
    assert rep["max_feature_psi"] < 0.02 and rep["score"]["psi"] < 0.02
    shifted = pl.DataFrame(
        {
            "x": rng.normal(1.0, 1, 5000),
            "sex": rng.choice(["F", "M"], 5000, p=[0.5, 0.5]),
            "probability": rng.beta(4, 20, 5000),
        }
    )
    rep2 = drift_report(ref, shifted, mc)
    assert rep2["decision"] == RETRAIN
    assert rep2["drifted_features"] == ["x"]
    assert rep2["score"]["psi"] > 0.1 and rep2["score"]["ks"] > 0.1
    assert any("score PSI" in r for r in rep2["reasons"])
    text = prometheus_text(rep2, "v1")
    assert 'clinrisk_drift_retrain{model_version="v1"} 1' in text
    assert 'clinrisk_drift_feature_psi{feature="x",model_version="v1"}' in text
    small = drift_report(ref, shifted.head(10), mc)
    assert small["decision"] == "insufficient_data"


def test_drift_job_on_bundle(trained_bundle_dir: Path, synthetic_features_dir: Path, tmp_path: Path) -> None:
    from clinrisk.bundle import load_bundle
    from clinrisk.evaluate import load_test_frame

    bundle = load_bundle(trained_bundle_dir)
    test = load_test_frame(synthetic_features_dir)
    cfg = load_config(None, [f"run.output_dir={tmp_path}"])
    with RequestLogger(tmp_path / "log") as lg:
        lg.log(test, bundle.predict_proba(test), bundle.version)
    rep = run_drift_job(cfg, trained_bundle_dir, tmp_path / "log", tmp_path / "drift")
    assert rep["decision"] == OK, rep["reasons"]
    # later population: higher HbA1c and BMI, less testing → feature and score drift
    later = test.with_columns(
        (pl.col("hba1c_last_3y") + 0.6).alias("hba1c_last_3y"),
        (pl.col("hba1c_mean_3y") + 0.6).alias("hba1c_mean_3y"),
        (pl.col("bmi") + 4.0).alias("bmi"),
    )
    with RequestLogger(tmp_path / "log2") as lg:
        lg.log(later, bundle.predict_proba(later), bundle.version)
    rep2 = run_drift_job(cfg, trained_bundle_dir, tmp_path / "log2", tmp_path / "drift2", mlflow=True)
    assert rep2["decision"] == RETRAIN
    assert {"hba1c_last_3y", "bmi"} <= set(rep2["drifted_features"])
    assert rep2["score"]["psi"] > rep["score"]["psi"]
    for f in ("report.json", "report.md", "metrics.prom"):
        assert (tmp_path / "drift2" / f).is_file()
    assert rep2["mlflow_run_id"]


def test_calendar_trend_features_reported_not_counted() -> None:
    """Features that rise with calendar time (history_years, age, *_years_since, *_ever) leave the training
    range and shift in every later year by construction: reported per feature, not counted for retraining."""
    rng = np.random.default_rng(3)
    ref = _reference(rng)
    for name in ("history_years", "hba1c_years_since", "x_other"):
        ref["features"][name] = {
            "type": "numeric",
            "edges": [1.0, 2.0, 3.0],
            "shares": [0.25] * 4,
            "missing_share": 0.0,
            "min": 0.0,
            "max": 4.0,
            "mean": 2.0,
        }
    n = 2000
    later = pl.DataFrame(
        {
            "x": rng.normal(0, 1, n),
            "sex": rng.choice(["F", "M"], n),
            "history_years": rng.integers(0, 12, n).astype(float),  # ~60% above the training max 4
            "hba1c_years_since": rng.integers(0, 9, n).astype(float),
            "x_other": rng.integers(0, 4, n).astype(float),  # same distribution as its reference
            "probability": rng.beta(2, 20, n),
        }
    )
    mc = MonitoringConfig(min_drifted_features=1)
    rep = drift_report(ref, later, mc)
    feats = {e["feature"]: e for e in rep["features"]}
    assert feats["history_years"]["out_of_range_share"] > 0.5 and feats["history_years"]["psi"] > 0.25
    assert feats["history_years"]["calendar_trend"] and feats["hba1c_years_since"]["calendar_trend"]
    assert not feats["x"]["calendar_trend"] and not feats["x_other"]["calendar_trend"]
    assert sorted(rep["drifted_calendar_trend_features"]) == ["hba1c_years_since", "history_years"]
    assert rep["drifted_features"] == [] and rep["n_drifted_features"] == 0
    assert rep["max_feature_out_of_range"] < 0.01  # only x's tail beyond its 20,000-draw reference range
    assert rep["decision"] == OK, rep["reasons"]
    # with no trend list the same rows trip both criteria: they measured elapsed time
    strict = drift_report(ref, later, mc.model_copy(update={"calendar_trend_features": []}))
    assert strict["max_out_of_range_feature"] == "history_years" and strict["max_feature_out_of_range"] > 0.5
    assert "history_years" in strict["drifted_features"] and strict["decision"] == RETRAIN
    assert any("out-of-training-range" in r for r in strict["reasons"])
    # a non-trend feature leaving its range still triggers
    shifted = later.with_columns(pl.col("x_other") + 10.0)
    rep3 = drift_report(ref, shifted, mc.model_copy(update={"min_drifted_features": 10}))
    assert rep3["max_out_of_range_feature"] == "x_other" and rep3["decision"] == RETRAIN


def test_out_of_range_criterion_is_per_feature_not_the_union() -> None:
    """Many features each with a thin tail beyond their reference max (sampling, no shift): the share of rows
    with *any* feature out of range exceeds the bound, the worst single feature does not."""
    rng = np.random.default_rng(4)
    k, n = 60, 5000
    ref = {
        "features": {
            f"f{i}": {
                "type": "numeric",
                "edges": [0.5],
                "shares": [0.5, 0.5],
                "missing_share": 0.0,
                "min": 0.0,
                "max": 0.999,  # 0.1% of U(0, 1) draws exceed it
                "mean": 0.5,
            }
            for i in range(k)
        }
    }
    logged = pl.DataFrame({f"f{i}": rng.random(n) for i in range(k)})
    mc = MonitoringConfig(out_of_range_bound=0.02)
    rep = drift_report(ref, logged, mc)
    assert rep["out_of_range_rate"] > 0.04  # 1 − 0.999**60 ≈ 0.058
    assert rep["max_feature_out_of_range"] < 0.005
    assert rep["decision"] == OK, rep["reasons"]
    shifted = logged.with_columns(pl.col("f7") * 1.1)  # ~9% of f7 beyond its max
    rep2 = drift_report(ref, shifted, mc)
    assert rep2["max_out_of_range_feature"] == "f7" and rep2["decision"] == RETRAIN


def test_calendar_trend_features_rejects_empty_pattern() -> None:
    with pytest.raises(ValueError, match="calendar_trend_features"):
        MonitoringConfig(calendar_trend_features=["age", " "])


# ---------------------------------------------------------------- weights and standardisation (opt-in)


def test_weighted_shares_and_ks_hand_computed() -> None:
    # bins (-inf, 1), [1, 2), [2, inf) + missing, one row each with weights 1, 2, 3, 4 → shares w / 10
    s = numeric_bin_shares([0.5, 1.5, 2.5, float("nan")], [1.0, 2.0], weights=[1, 2, 3, 4])
    np.testing.assert_allclose(s, [0.1, 0.2, 0.3, 0.4])
    c = categorical_shares(pl.Series(["F", "M", "M", None]), ["F", "M"], weights=[3, 1, 1, 5])
    np.testing.assert_allclose(c, [0.3, 0.2, 0.5])
    # weighted CDF at edge 0.5: rows 0.2 (w 3) and 0.8 (w 1) → 0.75 vs the reference's 0.5
    assert ks_at_edges([0.5, 0.5], [0.2, 0.8], [0.5], weights=[3, 1]) == pytest.approx(0.25)
    # unit weights change nothing
    x = np.random.default_rng(0).normal(size=200)
    np.testing.assert_allclose(
        numeric_bin_shares(x, [-1, 0, 1], np.ones(200)), numeric_bin_shares(x, [-1, 0, 1])
    )
    with pytest.raises(DataError, match="weights"):
        numeric_bin_shares([1.0, 2.0], [1.5], weights=[1.0, -1.0])
    with pytest.raises(DataError, match="weights"):
        numeric_bin_shares([1.0, 2.0], [1.5], weights=[1.0])


def _age_reference() -> dict:
    """age: bins (-inf, 50), [50, inf) with shares 0.5/0.5; x: bins (-inf, 0), [0, inf) with 0.5/0.5."""
    two = {"type": "numeric", "shares": [0.5, 0.5], "missing_share": 0.0}
    return {
        "features": {
            "age": {**two, "edges": [50.0], "min": 30.0, "max": 70.0, "mean": 50.0},
            "x": {**two, "edges": [0.0], "min": -5.0, "max": 5.0, "mean": 0.0},
        }
    }


def test_standardisation_weights_post_stratify_hand_computed() -> None:
    ref = _age_reference()
    logged = pl.DataFrame({"age": [40.0, 60.0, 60.0, 60.0], "x": [-1.0, 1.0, 1.0, -1.0]})
    w, info = standardisation_weights(ref, logged, ["age"])
    # current age shares 1/4, 3/4 → weights 0.5/0.25 = 2 and 0.5/0.75 = 2/3 (already mean 1)
    np.testing.assert_allclose(w, [2.0, 2 / 3, 2 / 3, 2 / 3])
    assert info["effective_rows"] == pytest.approx(16 / (4 + 3 * 4 / 9))
    assert info["unmatched_reference_share"] == 0.0 and info["zero_weight_rows"] == 0
    # weighted x shares: (-inf,0): 2 + 2/3 = 8/3 of 4 → 2/3; [0, inf): 4/3 of 4 → 1/3
    c = numeric_bin_shares(logged["x"].to_numpy(), [0.0], w)
    np.testing.assert_allclose(c, [2 / 3, 1 / 3, 0.0])
    # the report's x PSI is the PSI of exactly those shares against (0.5, 0.5, 0)
    mc = MonitoringConfig(min_rows=1, standardise_by=["age"])
    rep = drift_report(ref, logged, mc)
    x = next(e for e in rep["features"] if e["feature"] == "x")
    assert x["psi"] == pytest.approx(psi([0.5, 0.5, 0.0], [2 / 3, 1 / 3, 0.0], mc.psi_floor))
    assert x["mean"] == pytest.approx((2 * -1 + 2 / 3 * (1 + 1 - 1)) / 4)
    # the standardising feature keeps its raw PSI (shares 1/4, 3/4), flagged and not counted
    a = next(e for e in rep["features"] if e["feature"] == "age")
    assert a["standardised"] and a["psi"] == pytest.approx(
        psi([0.5, 0.5, 0.0], [0.25, 0.75, 0.0], mc.psi_floor)
    )
    assert rep["standardisation"]["by"] == ["age"]
    # a reference bin nobody now falls in cannot be matched: reported, remaining rows renormalised
    old = pl.DataFrame({"age": [60.0, 65.0], "x": [1.0, -1.0]})
    w2, info2 = standardisation_weights(ref, old, ["age"])
    np.testing.assert_allclose(w2, [1.0, 1.0])
    assert info2["unmatched_reference_share"] == pytest.approx(0.5)


def test_standardisation_removes_a_shift_explained_by_age_only() -> None:
    """x depends on age only; the logged population is older: unweighted x drifts, age-standardised it does
    not. A shift of x within age groups still shows after standardisation."""
    rng = np.random.default_rng(5)

    def draw(n: int, p_old: float, shift: float = 0.0) -> pl.DataFrame:
        old = rng.random(n) < p_old
        age = np.where(old, rng.uniform(50, 70, n), rng.uniform(30, 50, n))
        return pl.DataFrame({"age": age, "x": np.where(old, 1.0, -1.0) + shift + rng.normal(0, 0.5, n)})

    base = draw(40_000, 0.5)
    edges_x = np.quantile(base["x"].to_numpy(), np.linspace(0.1, 0.9, 9)).tolist()
    ref = {
        "features": {
            "age": {
                "type": "numeric",
                "edges": [40.0, 50.0, 60.0],
                "shares": [0.25] * 4,
                "missing_share": 0.0,
            },
            "x": {"type": "numeric", "edges": edges_x, "shares": [0.1] * 10, "missing_share": 0.0},
        }
    }
    older = draw(5000, 0.85)
    mc = MonitoringConfig(min_drifted_features=1)
    raw = drift_report(ref, older, mc)
    std = drift_report(ref, older, mc.model_copy(update={"standardise_by": ["age"]}))
    assert raw["decision"] == RETRAIN and raw["drifted_features"] == ["x"]
    assert std["decision"] == OK and std["n_drifted_features"] == 0, std["reasons"]
    assert std["standardisation"]["effective_rows"] < 5000
    moved = drift_report(ref, draw(5000, 0.85, shift=1.0), mc.model_copy(update={"standardise_by": ["age"]}))
    assert moved["drifted_features"] == ["x"] and moved["decision"] == RETRAIN
    # explicit weights give the same x as the config option
    w, _ = standardisation_weights(ref, older, ["age"])
    via_weights = drift_report(ref, older, mc, weights=w)
    px = {e["feature"]: e["psi"] for e in via_weights["features"]}
    assert px["x"] == pytest.approx(next(e["psi"] for e in std["features"] if e["feature"] == "x"))


def test_raking_matches_every_margin() -> None:
    rng = np.random.default_rng(6)
    n = 3000
    logged = pl.DataFrame(
        {
            "age": rng.uniform(30, 70, n) + 10 * (rng.random(n) < 0.3),
            "sex": rng.choice(["F", "M"], n, p=[0.7, 0.3]),
        }
    )
    ref = {
        "features": {
            "age": {"type": "numeric", "edges": [50.0], "shares": [0.5, 0.5], "missing_share": 0.0},
            "sex": {"type": "categorical", "levels": ["F", "M"], "shares": [0.4, 0.6], "missing_share": 0.0},
        }
    }
    w, info = standardisation_weights(ref, logged, ["age", "sex"])
    np.testing.assert_allclose(
        numeric_bin_shares(logged["age"].to_numpy(), [50.0], w), [0.5, 0.5, 0.0], atol=1e-6
    )
    np.testing.assert_allclose(categorical_shares(logged["sex"], ["F", "M"], w), [0.4, 0.6, 0.0], atol=1e-6)
    assert w.mean() == pytest.approx(1.0) and info["effective_rows"] < n


def test_standardisation_errors_name_the_field() -> None:
    ref = _age_reference()
    logged = pl.DataFrame({"age": [40.0, 60.0], "x": [0.0, 1.0]})
    with pytest.raises(DataError, match=r"standardise_by.*'bmi'"):
        standardisation_weights(ref, logged, ["bmi"])
    with pytest.raises(DataError, match=r"standardise_by.*'age'"):
        standardisation_weights(ref, logged.drop("age"), ["age"])
    with pytest.raises(DataError, match="not both"):
        drift_report(ref, logged, MonitoringConfig(standardise_by=["age"]), weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="standardise_by"):
        MonitoringConfig(standardise_by=["age", "age"])
    with pytest.raises(ValueError, match="standardise_by"):
        MonitoringConfig(standardise_by=[""])
    # the default stays unweighted
    assert MonitoringConfig().standardise_by == []
    assert drift_report(ref, logged, MonitoringConfig(min_rows=1))["standardisation"] is None
    # min_rows applies to the effective rows when weighted
    rep = drift_report(ref, logged, MonitoringConfig(min_rows=2), weights=[1.0, 0.0])
    assert rep["decision"] == "insufficient_data" and "effective" in rep["reasons"][0]
