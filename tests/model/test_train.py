"""Training: model behaviour (directional, invariance, minimum functionality), imbalance handling, E2 soft
labels, calibration on validation only, leakage guards and input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clinrisk.bundle import load_bundle
from clinrisk.errors import DataError
from clinrisk.io import list_shards
from clinrisk.train import class_weighted, train_model
from tests.model.conftest import (
    SPLITS,
    make_features_dataset,
    small_config,
    synth_frame,
    write_features_dataset,
)


def _validation_frame(features_dir: Path) -> pl.DataFrame:
    return pl.read_parquet([str(f) for f in list_shards(features_dir)]).filter(
        pl.col("split").cast(pl.String) == "validation"
    )


def _profile(n: int = 1, **values: float) -> pl.DataFrame:
    """Rows of one clinical profile with every model feature set."""
    base = {
        "age": 55,
        "sex": "F",
        "insurance": "commercial",
        "hba1c_last_3y": 5.6,
        "hba1c_mean_3y": 5.6,
        "glucose_last_3y": 98.0,
        "bmi": 27.0,
        "visits": 2,
        "rx_metformin": 0,
        "ldl_mean_3y": 0.0,
    }
    base.update(values)
    return pl.DataFrame({k: [v] * n for k, v in base.items()})


# ------------------------------------------------------------------------------------ model behaviour


def test_directional_higher_hba1c_and_glucose_raise_risk(
    trained_bundle_dir: Path, synthetic_features_dir: Path
):
    b = load_bundle(trained_bundle_dir)
    val = _validation_frame(synthetic_features_dir)
    p0 = b.predict_proba(val)
    up_a1c = b.predict_proba(val.with_columns(pl.col("hba1c_last_3y") + 1.0, pl.col("hba1c_mean_3y") + 1.0))
    up_glu = b.predict_proba(val.with_columns(pl.col("glucose_last_3y") + 30.0))
    assert up_a1c.mean() > 2 * p0.mean()
    assert np.mean(up_a1c >= p0) > 0.95
    assert up_glu.mean() > p0.mean()
    assert np.mean(up_glu >= p0) > 0.8


def test_invariance_to_patient_id_and_row_order(trained_bundle_dir: Path, synthetic_features_dir: Path):
    b = load_bundle(trained_bundle_dir)
    val = _validation_frame(synthetic_features_dir).with_row_index("_row")
    p = b.predict_proba(val)
    shuffled = val.sample(fraction=1.0, shuffle=True, seed=3).with_columns(
        (pl.col("patient_id") * 7919 + 13).alias("patient_id")
    )
    p_s = b.predict_proba(shuffled)
    back = np.empty_like(p_s)
    back[shuffled["_row"].to_numpy()] = p_s
    np.testing.assert_array_equal(back, p)


def test_minimum_functionality_clear_cases(trained_bundle_dir: Path):
    b = load_bundle(trained_bundle_dir)
    high = b.predict_proba(_profile(hba1c_last=7.8, hba1c_mean_3y=7.6, glucose_last=150.0, bmi=37.0, age=68))
    low = b.predict_proba(_profile(hba1c_last=4.9, hba1c_mean_3y=4.9, glucose_last=82.0, bmi=21.0, age=30))
    # > 3x the threshold: select now picks beta here (held-out Brier 0.0714 vs 0.0723 for none; the per-fold AP
    # check no longer rejects it), which pulls this extreme profile from ~0.45 to ~0.39
    assert high[0] >= b.threshold and high[0] > 0.3
    assert low[0] < b.threshold and low[0] < 0.03


def test_bundle_metrics_and_threshold_recorded(trained_bundle_dir: Path):
    b = load_bundle(trained_bundle_dir)
    v = b.metrics["validation"]
    assert v["auc"] > 0.75 and v["ap"] > 2 * v["prevalence"]
    # The map is chosen on held-out validation folds and the bundle states the rule and the figures.
    sel = b.calibration["selection"]
    assert b.calibration["method"] == sel["chosen"] == b.metadata["calibration_method"]
    assert "held-out" in sel["rule"] and sel["held_out_ap_change_vs_none"] >= -0.002
    if b.calibration["method"] == "logistic":  # calibration-in-the-large holds by construction of the MLE
        assert v["oe"] == pytest.approx(1.0, abs=1e-6)
    assert b.threshold_info["method"] == "net_benefit" and b.threshold == pytest.approx(0.10)
    assert str(round(b.threshold_info["argmax_tau"], 3)) in b.threshold_info["reason"]
    assert b.metadata["objective"] == "binary" and b.metadata["n_validation_rows"] > 0


# ------------------------------------------------------------------------------------ leakage, determinism


def test_training_reads_no_test_rows_nor_eval_columns(
    trained_bundle_dir: Path, synthetic_features_dir: Path, tmp_path: Path
):
    """Same data with eval_ columns dropped and test labels scrambled → the identical bundle version."""
    df = synth_frame(1500, 0).drop(["eval_label_true", "eval_oracle_risk", "eval_undiagnosed"])
    is_test = pl.col("split").cast(pl.String) == "test"
    df = df.with_columns(pl.when(is_test).then(1 - pl.col("label")).otherwise(pl.col("label")).alias("label"))
    features = write_features_dataset(df, tmp_path / "features")
    train_model(small_config(), features, tmp_path / "bundle")
    assert load_bundle(tmp_path / "bundle").version == load_bundle(trained_bundle_dir).version
    assert (tmp_path / "bundle" / "model.txt").read_bytes() == (trained_bundle_dir / "model.txt").read_bytes()


def test_calibration_fitted_on_validation_rows_only(tmp_path: Path):
    """Validation labels alone are shifted up by +1.2 logits: only a validation-fitted map follows them."""
    features = make_features_dataset(tmp_path / "features", val_label_shift=1.2, seed=1)
    train_model(small_config(None, "train.calibration=logistic"), features, tmp_path / "bundle")
    b = load_bundle(tmp_path / "bundle")
    cal = b.metrics["validation"]
    raw = b.metrics["validation_uncalibrated"]
    assert cal["oe"] == pytest.approx(1.0, abs=1e-6)
    assert raw["oe"] > 1.5  # the training-fitted model under-predicts the shifted validation labels
    assert b.calibration["a"] > 0.5  # the intercept moved toward the validation shift
    train_rows = pl.read_parquet([str(f) for f in list_shards(features)]).filter(
        pl.col("split").cast(pl.String) == "train"
    )
    assert b.predict_proba(train_rows).mean() > 1.4 * train_rows["label"].mean()


# ---------------------------------------------------------------------------------------- imbalance


def test_class_weighted_labels_match_weighted_loss():
    y = np.array([0.0, 1.0, 0.3])
    w = np.array([1.0, 2.0, 1.0])
    ly, lw = class_weighted(y, w, 4.0)
    # weight·[y' log p + (1−y') log(1−p)] equals w·[4y log p + (1−y) log(1−p)] for every p.
    np.testing.assert_allclose(lw * ly, w * 4 * y)
    np.testing.assert_allclose(lw * (1 - ly), w * (1 - y))


def test_class_weight_odds_correction_recovers_unweighted_calibration(
    synthetic_features_dir: Path, tmp_path: Path
):
    base = small_config(None, "train.calibration=none")
    weighted = small_config(None, "train.calibration=none", "train.positive_class_weight=5")
    train_model(base, synthetic_features_dir, tmp_path / "u")
    train_model(weighted, synthetic_features_dir, tmp_path / "w")
    bu, bw = load_bundle(tmp_path / "u"), load_bundle(tmp_path / "w")
    val = _validation_frame(synthetic_features_dir)
    pu, pw = bu.predict_proba(val), bw.predict_proba(val)
    naive = 1 / (1 + np.exp(-bw.predict_raw(val)))  # weighted model without the correction
    assert naive.mean() > 2.5 * pu.mean()
    assert pw.mean() == pytest.approx(pu.mean(), rel=0.25)
    np.testing.assert_allclose(pw, naive / (naive + 5 * (1 - naive)), rtol=1e-9)
    assert bw.metadata["positive_class_weight"] == 5.0


# ------------------------------------------------------------------------------------------- E2 soft


def test_e2_soft_labels_use_cross_entropy_and_soft_calibration(tmp_path: Path):
    features = make_features_dataset(tmp_path / "features", soft=True, seed=2)
    train_model(
        small_config(None, "labels.strategy=E2", "train.calibration=logistic"), features, tmp_path / "bundle"
    )
    b = load_bundle(tmp_path / "bundle")
    assert b.metadata["objective"] == "cross_entropy" and b.metadata["soft_labels"] is True
    assert "objective=cross_entropy" in (tmp_path / "bundle" / "model.txt").read_text()
    from clinrisk.calibration import patient_fold
    from clinrisk.train import VALIDATION_PART_SALT

    val = _validation_frame(features)
    val = val.filter(pl.Series(patient_fold(val["patient_id"].to_numpy(), 2, salt=VALIDATION_PART_SALT) == 1))
    # Calibrated on the soft labels of the calibration part: there mean risk equals mean soft label.
    assert b.predict_proba(val).mean() == pytest.approx(val["label"].mean(), rel=1e-4)
    assert b.metrics["validation"]["n_pos"] != b.metrics["validation_label_rec"]["n_pos"]


def test_e0_with_expected_calibration_labels_keeps_binary_objective_and_ranking(tmp_path: Path):
    """labels.calibration_target=expected puts expected true labels (soft) on the calibration part only: the
    fit stays binary on the hard training labels, the map is fitted to the soft labels (calibrated mean risk
    = their mean) and, being monotone, leaves the ranking exactly as the uncalibrated scores'."""
    from clinrisk.calibration import patient_fold
    from clinrisk.metrics import roc_auc
    from clinrisk.train import VALIDATION_PART_SALT

    df = synth_frame(1500, 3, False, 0.0)
    part = patient_fold(df["patient_id"].to_numpy(), 2, salt=VALIDATION_PART_SALT)
    cal_rows = pl.Series((df["split"].cast(pl.String) == "validation").to_numpy() & (part == 1))
    # expected true labels exceed the recorded ones (uncoded onsets): raise the calibration part's labels
    df = df.with_columns(
        pl.when(cal_rows).then(pl.col("label") * 0.9 + 0.05).otherwise(pl.col("label")).alias("label")
    )
    features = write_features_dataset(df, tmp_path / "features")
    train_model(small_config(None, "train.calibration=logistic"), features, tmp_path / "b")
    train_model(small_config(None, "train.calibration=none"), features, tmp_path / "u")
    b, u = load_bundle(tmp_path / "b"), load_bundle(tmp_path / "u")
    assert b.metadata["objective"] == "binary"
    assert (tmp_path / "b" / "model.txt").read_bytes() == (tmp_path / "u" / "model.txt").read_bytes()
    val = _validation_frame(features)
    cal = val.filter(pl.Series(patient_fold(val["patient_id"].to_numpy(), 2, salt=VALIDATION_PART_SALT) == 1))
    assert b.predict_proba(cal).mean() == pytest.approx(cal["label"].mean(), rel=1e-4)
    y = (val["label"] > 0.5).cast(pl.Float64).to_numpy()
    assert roc_auc(y, b.predict_proba(val)) == pytest.approx(roc_auc(y, u.predict_proba(val)), abs=1e-12)


# ---------------------------------------------------------------------------------- selection and errors


def test_selected_features_subset(synthetic_features_dir: Path, tmp_path: Path):
    sel = ["hba1c_last_3y", "glucose_last_3y", "age", "sex"]
    train_model(small_config(), synthetic_features_dir, tmp_path / "bundle", selected_features=sel)
    b = load_bundle(tmp_path / "bundle")
    assert b.feature_names == ["age", "sex", "hba1c_last_3y", "glucose_last_3y"]  # spec order
    assert set(b.reference["features"]) == set(sel)
    assert b.predict_proba(_validation_frame(synthetic_features_dir)).shape[0] > 0


def test_selected_feature_not_in_spec_is_an_error(synthetic_features_dir: Path, tmp_path: Path):
    with pytest.raises(DataError, match="hba1c_max"):
        train_model(small_config(), synthetic_features_dir, tmp_path / "b", selected_features=["hba1c_max"])
    assert not (tmp_path / "b").exists()


def test_eval_column_as_feature_is_refused(synthetic_features_dir: Path, tmp_path: Path):
    features = tmp_path / "features"
    shutil.copytree(synthetic_features_dir, features)
    spec = json.loads((features / "feature_spec.json").read_text())
    spec["feature_names"].append("eval_oracle_risk")
    spec["dtypes"]["eval_oracle_risk"] = "Float32"
    (features / "feature_spec.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="eval_oracle_risk"):
        train_model(small_config(), features, tmp_path / "b")


def test_missing_feature_column_names_shard_and_column(synthetic_features_dir: Path, tmp_path: Path):
    features = tmp_path / "features"
    shutil.copytree(synthetic_features_dir, features)
    f = features / "shard=001" / "part.parquet"
    pl.read_parquet(f).drop("bmi").write_parquet(f)
    with pytest.raises(DataError, match=r"shard=001.*bmi"):
        train_model(small_config(), features, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_validation_is_cut_into_disjoint_patient_parts(
    trained_bundle_dir: Path, synthetic_features_dir: Path
):
    """Early stopping and calibration/threshold use different patients of the validation split."""
    from clinrisk.io import list_shards
    from clinrisk.train import CALIBRATION, VALIDATION, scan_splits

    rows = scan_splits(list_shards(synthetic_features_dir), [], {})
    stop, cal = rows[VALIDATION].patient_ids(), rows[CALIBRATION].patient_ids()
    assert stop.size > 0 and cal.size > 0
    assert not set(stop.tolist()) & set(cal.tolist())
    df = pl.read_parquet([str(f) for f in list_shards(synthetic_features_dir)])
    val = df.filter((pl.col("split").cast(pl.String) == "validation") & (pl.col("sample_weight") > 0))
    assert stop.size + cal.size == val.height
    assert 0.3 < cal.size / val.height < 0.7
    b = load_bundle(trained_bundle_dir)
    assert b.metadata["n_calibration_rows"] == cal.size and b.metadata["n_early_stopping_rows"] == stop.size
    assert b.metrics["validation"]["n"] == cal.size  # calibration metrics are on the calibration part


def test_no_validation_rows_is_an_error(tmp_path: Path):
    df = synth_frame(300, 4).with_columns(
        pl.when(pl.col("split").cast(pl.String) == "validation")
        .then(pl.lit("test"))
        .otherwise(pl.col("split").cast(pl.String))
        .cast(pl.Enum(SPLITS))
        .alias("split")
    )
    features = write_features_dataset(df, tmp_path / "features")
    with pytest.raises(DataError, match="validation"):
        train_model(small_config(), features, tmp_path / "b")


# ------------------------------------------------------------------------- integration with the features stage


def test_trains_on_real_features_stage_output(tmp_path: Path):
    """The features stage's own output (Enum categoricals, narrow dtypes, eval_ columns) trains and predicts."""
    from clinrisk.features_stage import build_features_dataset
    from clinrisk.io import shard_file
    from tests.features.synth import synthetic_raw, synthetic_truth

    for s in range(2):
        raw = synthetic_raw(300, seed=s, id_offset=10_000 * s)
        for name, df in (("validated", raw), ("truth", synthetic_truth(raw, s))):
            f = shard_file(tmp_path / name, s)
            f.parent.mkdir(parents=True)
            df.write_parquet(f)
    cfg = small_config(None, "train.min_data_in_leaf=5")
    build_features_dataset(cfg, tmp_path / "validated", tmp_path / "features", tmp_path / "truth", workers=1)
    res = train_model(cfg, tmp_path / "features", tmp_path / "bundle")
    b = load_bundle(tmp_path / "bundle")
    assert b.version == res["metadata"]["bundle_version"]
    assert not any(n.startswith("eval_") for n in b.feature_names)
    frame = pl.read_parquet([str(f) for f in list_shards(tmp_path / "features")])
    p = b.predict_proba(frame)
    assert p.shape == (frame.height,) and np.all((p > 0) & (p < 1))
    cats = [n for n in b.feature_names if b.spec["dtypes"][n] == "Enum"]
    assert cats and set(cats) == set(b.metadata["categorical_features"])
    # Our encoding equals the features module's own matrix (Enum physical codes).
    from clinrisk.features import FeatureSpec, feature_matrix

    spec = FeatureSpec.from_json(tmp_path / "features" / "feature_spec.json")
    np.testing.assert_array_equal(b.to_matrix(frame), feature_matrix(frame, spec))
