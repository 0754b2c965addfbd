"""The one-pass rule check in front of pandera (issue 20): it may only say "passes" when pandera passes.

Every kind of bad value the schema catches is injected into a good frame; the fast path must refuse it
(so pandera runs and raises its own message), and the good frame must pass both without pandera.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from clinrisk.config import load_config
from clinrisk.errors import DataError
from clinrisk.feature_schema import (
    build_feature_schema,
    column_rules,
    passes_all_rules,
    validate_features,
)
from clinrisk.features import FeatureSpec
from clinrisk.features_stage import build_features_dataset
from clinrisk.io import list_shards, shard_file
from tests.features.synth import synthetic_raw, synthetic_truth


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[pl.DataFrame, FeatureSpec]:
    d: Path = tmp_path_factory.mktemp("fastpath")
    raw = synthetic_raw(200, seed=3, id_offset=0)
    for name, df in (("validated", raw), ("truth", synthetic_truth(raw, 3))):
        f = shard_file(d / name, 0)
        f.parent.mkdir(parents=True)
        df.write_parquet(f)
    cfg = load_config(None, ["split.temporal=false"])
    build_features_dataset(cfg, d / "validated", d / "features", d / "truth", workers=1)
    spec = FeatureSpec.from_json(d / "features" / "feature_spec.json")
    return pl.read_parquet(list_shards(d / "features")[0]), spec


def _set_first(df: pl.DataFrame, col: str, value: object) -> pl.DataFrame:
    """``df`` with the first row of ``col`` replaced (same dtype), every other row unchanged."""
    first = pl.int_range(pl.len()) == 0
    return df.with_columns(
        pl.when(first).then(pl.lit(value)).otherwise(pl.col(col)).cast(df[col].dtype).alias(col)
    )


def test_good_frame_passes_without_pandera(good) -> None:
    df, spec = good
    assert passes_all_rules(df, column_rules(spec, with_eval=True))
    build_feature_schema(spec, with_eval=True).validate(df, lazy=True)  # pandera agrees
    assert validate_features(df, spec) is df


def _float_feature(spec: FeatureSpec, df: pl.DataFrame) -> str:
    rules = column_rules(spec, with_eval=True)
    return next(
        n for n in spec.feature_names if df[n].dtype == pl.Float32 and rules[n].get("max") is not None
    )


@pytest.mark.parametrize(
    "corrupt",
    [
        "nan_in_float",
        "above_max",
        "below_min",
        "null_in_required",
        "not_in_set",
        "nan_in_label",
        "wrong_dtype",
        "missing_column",
        "extra_column",
    ],
)
def test_every_violation_kind_falls_through_to_pandera(good, corrupt: str) -> None:
    df, spec = good
    rules = column_rules(spec, with_eval=True)
    x = _float_feature(spec, df)
    flag = next(n for n in spec.feature_names if rules[n].get("isin") == [0, 1])
    bad = {
        "nan_in_float": lambda: _set_first(df, x, float("nan")),
        "above_max": lambda: _set_first(df, x, rules[x]["max"] * 2 + 1),
        "below_min": lambda: _set_first(df, x, rules[x]["min"] - 1),
        "null_in_required": lambda: _set_first(df, "sample_weight", None),
        "not_in_set": lambda: _set_first(df, flag, 7),
        "nan_in_label": lambda: _set_first(df, "label", float("nan")),
        "wrong_dtype": lambda: df.with_columns(pl.col(x).cast(pl.Float64)),
        "missing_column": lambda: df.drop("age"),
        "extra_column": lambda: df.with_columns(pl.lit(1.0).alias("onset_year")),
    }[corrupt]()
    assert not passes_all_rules(bad, rules)
    with pytest.raises(DataError):
        validate_features(bad, spec)


def test_empty_frame_with_right_schema_passes(good) -> None:
    df, spec = good
    assert passes_all_rules(df.head(0), column_rules(spec, with_eval=True))
    build_feature_schema(spec, with_eval=True).validate(df.head(0), lazy=True)
