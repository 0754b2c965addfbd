"""The model bundle: layout, load validation, prediction paths, encoding, provenance."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clinrisk.bundle import (
    BUNDLE_FILES,
    OOD_FILE,
    ModelBundle,
    content_hash,
    features_to_matrix,
    load_bundle,
    update_metrics,
)
from clinrisk.calibration import apply_calibration, fit_calibration, fit_logistic
from clinrisk.errors import DataError
from clinrisk.io import list_shards


@pytest.fixture(scope="module")
def bundle(trained_bundle_dir: Path) -> ModelBundle:
    return load_bundle(trained_bundle_dir)


@pytest.fixture(scope="module")
def frame(synthetic_features_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(str(list_shards(synthetic_features_dir)[0]))


def test_layout_and_metadata(trained_bundle_dir: Path, bundle: ModelBundle):
    assert sorted(p.name for p in trained_bundle_dir.iterdir()) == sorted((*BUNDLE_FILES, OOD_FILE))
    md = bundle.metadata
    for key in (
        "bundle_version",
        "created_utc",
        "data_hash",
        "git_sha",
        "clinrisk_version",
        "label_strategy",
        "positive_class_weight",
        "n_train_rows",
        "best_iteration",
    ):
        assert key in md, key
    assert bundle.version == content_hash(trained_bundle_dir)[:16]
    assert md["best_iteration"] == bundle.booster.num_trees()
    assert bundle.spec["feature_names"] == bundle.feature_names
    assert set(bundle.categories) == {"sex", "insurance"}
    ref = bundle.reference
    assert set(ref["features"]) == set(bundle.feature_names)
    a1c = ref["features"]["hba1c_last_3y"]
    assert a1c["min"] <= a1c["mean"] <= a1c["max"] and 0.05 < a1c["null_share"] < 0.15
    assert sum(a1c["shares"]) == pytest.approx(1.0) and len(a1c["shares"]) == len(a1c["edges"]) + 1
    assert sum(ref["features"]["sex"]["shares"]) == pytest.approx(1.0)
    assert ref["score"]["n"] == md["n_validation_rows"]


def test_update_metrics_keeps_version(trained_bundle_dir: Path, tmp_path: Path):
    copy = shutil.copytree(trained_bundle_dir, tmp_path / "b")
    before = load_bundle(copy).version
    update_metrics(copy, "test", {"auc": 0.8})
    b = load_bundle(copy)
    assert b.metrics["test"] == {"auc": 0.8} and b.version == before == content_hash(copy)[:16]


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_missing_file_is_named(trained_bundle_dir: Path, tmp_path: Path, name: str):
    copy = shutil.copytree(trained_bundle_dir, tmp_path / "b")
    (copy / name).unlink()
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        load_bundle(copy)


def test_corrupt_files_are_named(trained_bundle_dir: Path, tmp_path: Path):
    copy = shutil.copytree(trained_bundle_dir, tmp_path / "b")
    (copy / "calibration.json").write_text('{"method": "logistic", "a": 1.0}')
    with pytest.raises(DataError, match=r"calibration\.json.*'b'"):
        load_bundle(copy)
    shutil.copy(trained_bundle_dir / "calibration.json", copy / "calibration.json")
    (copy / "threshold.json").write_text("{not json")
    with pytest.raises(DataError, match=r"threshold\.json"):
        load_bundle(copy)
    shutil.copy(trained_bundle_dir / "threshold.json", copy / "threshold.json")
    (copy / "model.txt").write_text("garbage")
    with pytest.raises(DataError, match=r"model\.txt"):
        load_bundle(copy)
    with pytest.raises(DataError, match="not found"):
        load_bundle(tmp_path / "nope")


def test_predict_paths_agree(bundle: ModelBundle, frame: pl.DataFrame):
    p = bundle.predict_proba(frame)
    assert p.shape == (frame.height,) and np.all((p > 0) & (p < 1))
    # ndarray in feature order, pandas, and a frame with only the feature columns give the same numbers.
    X = features_to_matrix(frame, bundle.feature_names, bundle.categories)
    np.testing.assert_array_equal(bundle.predict_proba(X), p)
    np.testing.assert_array_equal(bundle.predict_proba(frame.select(bundle.feature_names).to_pandas()), p)
    # The documented chain: raw → odds correction (w = 1) → calibration map.
    z = bundle.predict_raw(frame) - math.log(bundle.positive_class_weight)
    np.testing.assert_allclose(p, apply_calibration(bundle.calibration, z), rtol=0, atol=0)
    # TreeSHAP contributions (+ bias) sum to the raw margin.
    contrib = bundle.predict_contrib(frame)
    assert contrib.shape == (frame.height, len(bundle.feature_names) + 1)
    np.testing.assert_allclose(contrib.sum(axis=1), bundle.predict_raw(frame), atol=1e-9)
    assert bundle.predict_proba(frame.head(0)).shape == (0,)


def test_missing_feature_column_is_named(bundle: ModelBundle, frame: pl.DataFrame):
    with pytest.raises(DataError, match="glucose_last_3y"):
        bundle.predict_proba(frame.drop("glucose_last_3y"))
    with pytest.raises(DataError, match="columns"):
        bundle.predict_proba(np.zeros((2, 3)))


def test_categorical_encoding_by_level_name():
    levels = ["commercial", "medicaid", "__OTHER__"]
    df = pl.DataFrame(
        {
            "ins": pl.Series(["medicaid", "commercial", None, "martian"]),
            "ins_enum": pl.Series(
                ["medicaid", "commercial", None, "medicaid"], dtype=pl.Enum(["medicaid", "commercial"])
            ),
            "x": pl.Series([1, None, 3, 4], dtype=pl.UInt8),
        }
    )
    X = features_to_matrix(df, ["ins", "ins_enum", "x"], {"ins": levels, "ins_enum": levels})
    assert X.dtype == np.float32 and X.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(X[:, 0], [1, 0, np.nan, 2])  # unseen → __OTHER__, null stays missing
    np.testing.assert_array_equal(X[:, 1], [1, 0, np.nan, 1])  # Enum order differs; codes follow the spec
    np.testing.assert_array_equal(X[:, 2], [1, np.nan, 3, 4])
    with pytest.raises(DataError, match="ins"):
        features_to_matrix(df, ["ins"], {})


def test_calibration_maps():
    rng = np.random.default_rng(0)
    z = rng.normal(-2, 1, 20_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.5 + 0.8 * z)))).astype(float)
    a, b = fit_logistic(z, y)
    assert a == pytest.approx(0.5, abs=0.15) and b == pytest.approx(0.8, abs=0.1)
    # Soft labels: fitting on the expected labels recovers the same map (no sampling noise at all).
    soft = 1 / (1 + np.exp(-(0.5 + 0.8 * z)))
    a2, b2 = fit_logistic(z, soft)
    assert a2 == pytest.approx(0.5, abs=1e-6) and b2 == pytest.approx(0.8, abs=1e-6)
    assert fit_calibration(z, y, method="auto", isotonic_min_positives=10**6)["method"] == "logistic"
    iso = fit_calibration(z, y, method="auto", isotonic_min_positives=100)
    assert iso["method"] == "isotonic"
    p = apply_calibration(iso, z)
    assert np.all(np.diff(p[np.argsort(z)]) >= 0)
    assert p.mean() == pytest.approx(y.mean(), abs=1e-9)
    json.dumps(iso)  # JSON-serialisable
    with pytest.raises(DataError, match="single class"):
        fit_calibration(z, np.zeros_like(z), method="logistic")
