"""Shared model-test fixtures: a small synthetic features dataset (contract layout) and a trained bundle.

Feature names and dtypes are a subset of what the real feature function produces (a test checks it). The
label depends on the HbA1c and glucose features (plus BMI and age), so directional tests
have a known answer. ``make_features_dataset`` is importable for tests that need a variant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clinrisk.config import ClinriskConfig, load_config

SPLITS = ["train", "validation", "test", "embargo", "unused"]
SEX = ["F", "M"]
INSURANCE = ["commercial", "medicaid", "medicare", "uninsured", "__OTHER__"]
FEATURES: dict[str, str] = {
    "age": "Int16",
    "sex": "Enum",
    "insurance": "Enum",
    "hba1c_last_3y": "Float32",
    "hba1c_mean_3y": "Float32",
    "glucose_last_3y": "Float32",
    "bmi": "Float32",
    "visits": "UInt8",
    "rx_metformin": "Int8",
    "ldl_mean_3y": "Float32",
}
YEARS = tuple(range(2005, 2011))


def true_risk(hba1c: np.ndarray, glucose: np.ndarray, bmi: np.ndarray, age: np.ndarray) -> np.ndarray:
    """The generating probability of the label (monotone increasing in every input)."""
    eta = -3.0 + 2.5 * (hba1c - 5.7) + 0.03 * (glucose - 100) + 0.06 * (bmi - 28) + 0.02 * (age - 50)
    return 1 / (1 + np.exp(-eta))


def feature_spec_dict() -> dict[str, object]:
    """A feature_spec.json following the contract (clinrisk.features.FeatureSpec fields)."""
    return {
        "spec_version": 1,
        "window_years": 3,
        "locf": True,
        "horizon_years": 3,
        "feature_names": list(FEATURES),
        "dtypes": dict(FEATURES),
        "categories": {"sex": SEX, "insurance": INSURANCE},
        "units": {"hba1c_last_3y": "%", "hba1c_mean_3y": "%", "glucose_last_3y": "mg/dL", "bmi": "kg/m2"},
        "raw_fields": ["patient_id", "year"],
        "rollups": {},
    }


def synth_frame(n_patients: int, seed: int, soft: bool = False, val_label_shift: float = 0.0) -> pl.DataFrame:
    """One row per patient-year with features, labels and eval_ columns.

    ``val_label_shift`` adds to the logit of validation-split labels only (to prove calibration reads
    validation rows and nothing else).
    """
    rng = np.random.default_rng(seed)
    pid = np.arange(1, n_patients + 1)
    base_a1c = rng.normal(5.7, 0.55, n_patients)
    base_glu = rng.normal(100, 12, n_patients)
    base_bmi = rng.normal(28, 4.5, n_patients)
    birth = rng.integers(1935, 1985, n_patients)
    sex = rng.integers(0, 2, n_patients)
    ins = rng.choice(4, n_patients, p=[0.55, 0.2, 0.15, 0.1])
    split_of = np.select([pid % 10 < 6, pid % 10 < 8], [0, 1], 2)  # 60/20/20 patient-disjoint
    n_years = len(YEARS)
    P = np.repeat(np.arange(n_patients), n_years)
    year = np.tile(np.asarray(YEARS), n_patients)
    k = year - YEARS[0]
    n = P.size
    a1c = base_a1c[P] + 0.04 * k + rng.normal(0, 0.15, n)
    glu = base_glu[P] + 0.5 * k + rng.normal(0, 6, n)
    bmi = base_bmi[P] + rng.normal(0, 0.8, n)
    age = year - birth[P]
    risk = true_risk(a1c, glu, bmi, age)
    split = split_of[P]
    if val_label_shift:
        eta = np.log(risk / (1 - risk)) + np.where(split == 1, val_label_shift, 0.0)
        risk = 1 / (1 + np.exp(-eta))
    hard = (rng.random(n) < risk).astype(np.int8)
    label = risk.astype(np.float32) if soft else hard.astype(np.float32)
    a1c_obs = np.where(rng.random(n) < 0.1, np.nan, a1c)
    mean3 = pl.DataFrame({"p": P, "a": a1c_obs}).select(
        pl.col("a").fill_nan(None).rolling_mean(3, min_samples=1).over("p")
    )["a"]
    return pl.DataFrame(
        {
            "patient_id": pl.Series(pid[P], dtype=pl.Int64),
            "year": pl.Series(year, dtype=pl.Int16),
            "split": pl.Series([SPLITS[s] for s in split], dtype=pl.Enum(SPLITS)),
            "age": pl.Series(age, dtype=pl.Int16),
            "sex": pl.Series([SEX[s] for s in sex[P]], dtype=pl.Enum(SEX)),
            "insurance": pl.Series([INSURANCE[i] for i in ins[P]], dtype=pl.Enum(INSURANCE)),
            "hba1c_last_3y": pl.Series(a1c_obs, dtype=pl.Float32, nan_to_null=True),
            "hba1c_mean_3y": mean3.cast(pl.Float32),
            "glucose_last_3y": pl.Series(glu, dtype=pl.Float32),
            "bmi": pl.Series(bmi, dtype=pl.Float32),
            "visits": pl.Series(rng.integers(0, 6, n), dtype=pl.UInt8),
            "rx_metformin": pl.Series((rng.random(n) < 0.03).astype(np.int8), dtype=pl.Int8),
            "ldl_mean_3y": pl.Series(rng.normal(size=n), dtype=pl.Float32),
            "label": pl.Series(label, dtype=pl.Float32),
            "label_rec": pl.Series(hard, dtype=pl.Int8),
            "sample_weight": pl.Series(np.ones(n), dtype=pl.Float32),
            "eval_label_true": pl.Series(hard, dtype=pl.Int8),
            "eval_oracle_risk": pl.Series(risk, dtype=pl.Float32),
            "eval_undiagnosed": pl.Series(np.zeros(n, dtype=bool)),
        }
    )


def write_features_dataset(
    df: pl.DataFrame, root: Path, n_shards: int = 3, row_group_size: int = 1000
) -> Path:
    """Write ``df`` as features/shard=NNN/part.parquet (patients never span shards) + feature_spec.json."""
    import json

    from clinrisk.io import shard_file

    root.mkdir(parents=True, exist_ok=True)
    shard_of = (df["patient_id"] % n_shards).alias("_shard")
    df = df.with_columns(shard_of).sort("patient_id", "year")
    for s in range(n_shards):
        part = df.filter(pl.col("_shard") == s).drop("_shard")
        f = shard_file(root, s)
        f.parent.mkdir(parents=True, exist_ok=True)
        part.write_parquet(f, compression="zstd", row_group_size=row_group_size)
    (root / "feature_spec.json").write_text(json.dumps(feature_spec_dict(), indent=2))
    return root


def make_features_dataset(
    root: Path, n_patients: int = 1500, seed: int = 0, soft: bool = False, val_label_shift: float = 0.0
) -> Path:
    """Synthetic features dataset in the contract layout at ``root``."""
    return write_features_dataset(synth_frame(n_patients, seed, soft, val_label_shift), root)


def small_config(tmp: Path | None = None, *extra: str) -> ClinriskConfig:
    """Fast training settings for tests (small trees, few rounds)."""
    sets = [
        "train.num_boost_round=120",
        "train.learning_rate=0.1",
        "train.num_leaves=15",
        "train.min_data_in_leaf=20",
        "train.early_stopping_rounds=20",
        "split.temporal=false",
        *extra,
    ]
    if tmp is not None:
        sets.append(f"run.output_dir={tmp}")
    return load_config(None, sets)


@pytest.fixture(scope="session")
def synthetic_features_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-shard synthetic features dataset (hard labels; ~9k rows, ~10% positive)."""
    return make_features_dataset(tmp_path_factory.mktemp("features") / "features")


@pytest.fixture(scope="session")
def trained_bundle_dir(synthetic_features_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained on ``synthetic_features_dir`` with :func:`small_config`."""
    from clinrisk.train import train_model

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    train_model(small_config(), synthetic_features_dir, out)
    return out
