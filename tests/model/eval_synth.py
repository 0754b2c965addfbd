"""Synthetic test-split feature frames for the evaluation tests (owned by the evaluation tests).

Onset follows a per-patient yearly hazard, so ``eval_oracle_risk`` (p^A) is the true probability of
``eval_label_true``; recorded diagnosis is delayed, more for the uninsured (differential label noise).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from clinrisk.config import load_config
from clinrisk.io import shard_file

INSURANCE = ["commercial", "medicaid", "medicare", "uninsured"]
ETHNICITY = ["White", "Black", "Hispanic", "Asian", "Other"]
H = 3


def synth_test_frame(
    n_patients: int = 1500, seed: int = 0, years: tuple[int, ...] = (2019, 2020)
) -> tuple[pl.DataFrame, np.ndarray]:
    """(features frame of test rows, model probability per row: a noisy, recorded-label-like risk)."""
    rng = np.random.default_rng(seed)
    ins = rng.choice(len(INSURANCE), n_patients, p=[0.55, 0.2, 0.15, 0.1])
    eth = rng.choice(len(ETHNICITY), n_patients, p=[0.6, 0.15, 0.15, 0.05, 0.05])
    sex = rng.choice(2, n_patients)
    age0 = rng.integers(25, 85, n_patients)
    z = rng.normal(size=n_patients)
    hazard = 1 / (1 + np.exp(-(-4.0 + 1.1 * z + 0.02 * (age0 - 55))))
    # First onset year from 2016 on (prevalent-undiagnosed possible), geometric in the hazard.
    onset = 2016 + rng.geometric(hazard) - 1
    onset_f = np.where(onset <= 2028, onset, np.nan)
    delay = np.where(
        ins == 3,
        rng.choice([0, 1, 2, 3, 4], n_patients, p=[0.1, 0.2, 0.3, 0.2, 0.2]),
        rng.choice([0, 1, 2, 3], n_patients, p=[0.4, 0.35, 0.15, 0.1]),
    )
    rec = onset_f + delay
    rows = []
    for i in range(n_patients):
        for t in years:
            if np.isfinite(rec[i]) and t >= rec[i]:
                continue  # rows end at the recorded diagnosis
            pa = 1.0 if np.isfinite(onset_f[i]) and onset_f[i] <= t else 1 - (1 - hazard[i]) ** H
            y_true = int(np.isfinite(onset_f[i]) and onset_f[i] <= t + H)
            y_rec = int(np.isfinite(rec[i]) and rec[i] <= t + H)
            rows.append((i + 1, t, pa, y_true, y_rec, onset_f[i], rec[i], i))
    ids, yr, pa, yt, yrec, ons, recs, idx = map(np.asarray, zip(*rows, strict=True))
    idx = idx.astype(int)
    n = len(ids)
    has_a1c = rng.random(n) < np.where(INSURANCE_ARR[ins[idx]] == "uninsured", 0.35, 0.75)
    df = pl.DataFrame(
        {
            "patient_id": pl.Series(ids, dtype=pl.Int64),
            "year": pl.Series(yr, dtype=pl.Int16),
            "split": pl.Series(
                ["test"] * n, dtype=pl.Enum(["train", "validation", "test", "embargo", "unused"])
            ),
            "age": pl.Series(age0[idx] + (yr - 2019), dtype=pl.Int16),
            "sex": pl.Series(np.array(["F", "M"])[sex[idx]], dtype=pl.Enum(["F", "M"])),
            "ethnicity": pl.Series(np.array(ETHNICITY)[eth[idx]], dtype=pl.Enum(ETHNICITY)),
            "insurance": pl.Series(INSURANCE_ARR[ins[idx]], dtype=pl.Enum(INSURANCE)),
            "visits": pl.Series(rng.poisson(np.where(ins[idx] == 3, 1.0, 3.0)), dtype=pl.UInt8),
            "hba1c_n_3y": pl.Series(np.where(has_a1c, rng.integers(1, 4, n), 0), dtype=pl.UInt8),
            "hba1c_years_since": pl.Series(
                [None if not h else int(v) for h, v in zip(has_a1c, rng.integers(0, 3, n), strict=True)],
                dtype=pl.Int16,
            ),
            "hba1c_locf": pl.Series(
                np.where(has_a1c, 5.4 + 0.5 * z[idx] + rng.normal(0, 0.2, n), np.nan), dtype=pl.Float32
            ).fill_nan(None),
            "bmi_locf": pl.Series(27 + 4 * z[idx] + rng.normal(0, 3, n), dtype=pl.Float32),
            "label": pl.Series(yrec, dtype=pl.Float32),
            "label_rec": pl.Series(yrec, dtype=pl.Int8),
            "sample_weight": pl.Series(np.ones(n), dtype=pl.Float32),
            "eval_label_true": pl.Series(yt, dtype=pl.Int8),
            "eval_oracle_risk": pl.Series(pa, dtype=pl.Float32),
            "eval_onset_year": pl.Series(ons, dtype=pl.Float64).fill_nan(None).cast(pl.Int16),
            "eval_recorded_year": pl.Series(recs, dtype=pl.Float64).fill_nan(None).cast(pl.Int16),
            "eval_undiagnosed": pl.Series(np.isfinite(ons) & (ons <= yr), dtype=pl.Boolean),
        }
    )
    # The "model": sees z only through a noisy proxy, and is scaled to recorded-label prevalence.
    proxy = 0.8 * z[idx] + rng.normal(0, 0.6, n) + np.where(has_a1c, 0.0, -0.3)
    logit = -2.75 + 1.0 * proxy + 0.02 * (age0[idx] - 55)
    p = 1 / (1 + np.exp(-logit))
    return df, p


INSURANCE_ARR = np.array(INSURANCE)


EVAL_FEATURES = ["age", "insurance", "visits", "hba1c_n_3y", "hba1c_locf", "bmi_locf"]


def write_eval_dataset(root: Path, df: pl.DataFrame) -> Path:
    """``df`` as a two-shard features dataset under ``root/features`` with its feature spec."""
    feats = root / "features"
    ids = df["patient_id"].to_numpy()
    for shard in range(2):
        part = df.filter(pl.Series((ids % 2) == shard))
        f = shard_file(feats, shard)
        f.parent.mkdir(parents=True)
        part.write_parquet(f)
    spec = {
        "feature_names": EVAL_FEATURES,
        "categories": {"insurance": ["commercial", "medicaid", "medicare", "uninsured", "__OTHER__"]},
    }
    (feats / "feature_spec.json").write_text(json.dumps(spec))
    return feats


def write_eval_bundle(root: Path, df: pl.DataFrame) -> Path:
    """A small LightGBM bundle trained on ``df`` (recorded labels), under ``root/bundle``."""
    import lightgbm as lgb

    from clinrisk.bundle import features_to_matrix, write_bundle
    from clinrisk.io import atomic_output_dir

    spec = json.loads((root / "features" / "feature_spec.json").read_text())
    X = features_to_matrix(df, EVAL_FEATURES, spec["categories"])
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 20, "verbose": -1, "seed": 0},
        lgb.Dataset(X, df["label_rec"].to_numpy(), feature_name=EVAL_FEATURES),
        num_boost_round=30,
    )
    out = root / "bundle"
    with atomic_output_dir(out) as tmp:
        write_bundle(
            tmp,
            model_text=booster.model_to_string(),
            spec=spec,
            feature_names=EVAL_FEATURES,
            calibration={"method": "none"},
            threshold={"value": 0.1, "method": "net_benefit", "reason": "p_t", "threshold_probability": 0.1},
            reference={"features": {}, "score": {}},
            metrics={},
            cfg=load_config(None),
            metadata={"positive_class_weight": 1.0, "label_strategy": "E0"},
        )
    return out
