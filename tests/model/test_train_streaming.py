"""The train step's out-of-core Dataset: the streamed (``lgb.Sequence`` per shard) Dataset trains the same
model as an in-memory matrix of the same rows, and building it holds no full copy of the feature matrix
(its traced peak does not grow with rows)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import lightgbm as lgb
import polars as pl
import pytest

from clinrisk.bundle import features_to_matrix
from clinrisk.feature_table import FeatureSpec
from clinrisk.io import list_shards
from clinrisk.train import TRAIN, lgb_params, scan_splits, sequence_dataset
from tests.model.conftest import small_config, synth_frame, write_features_dataset


def _inputs(features: Path) -> tuple[list[str], list[str], dict[str, list[str]]]:
    spec = FeatureSpec.from_json(features / "feature_spec.json")
    names = list(spec.feature_names)
    categorical = [n for n in names if n in spec.categories]
    return names, categorical, {n: spec.categories[n] for n in categorical}


def _train_rows_in_memory(features: Path, names: list[str], cats: dict[str, list[str]]) -> Any:
    """The same rows the streamed path selects (training split, weight > 0, shard and row order kept)."""
    frames = [pl.read_parquet(f) for f in list_shards(features)]
    df = pl.concat(frames).filter((pl.col("split").cast(pl.String) == TRAIN) & (pl.col("sample_weight") > 0))
    return features_to_matrix(df, names, cats), df["label"].to_numpy(), df["sample_weight"].to_numpy()


@pytest.mark.parametrize("sample_cnt", [200_000, 700])  # every row sampled | LightGBM's sampled subset
def test_streamed_dataset_trains_the_same_model_as_in_memory(tmp_path: Path, sample_cnt: int):
    features = write_features_dataset(synth_frame(1500, 4), tmp_path / "features")
    names, categorical, cats = _inputs(features)
    params = {**lgb_params(small_config(), "binary"), "bin_construct_sample_cnt": sample_cnt}
    train = scan_splits(list_shards(features), names, cats)[TRAIN]
    streamed = sequence_dataset(train, *train.labels_weights(), names, categorical, params=params)
    X, y, w = _train_rows_in_memory(features, names, cats)
    assert X.shape[0] == train.n
    # LightGBM's Sequence path draws its bin sample with ``data_random_seed`` as given (default 1); its
    # matrix path derives it from ``seed``. Stating it makes both draw the same sample rows.
    mat_params = {**params, "data_random_seed": 1}
    in_memory = lgb.Dataset(
        X, y, weight=w, feature_name=names, categorical_feature=categorical, params=mat_params
    )
    models = [lgb.train(params, ds, num_boost_round=30).model_to_string() for ds in (streamed, in_memory)]
    # Identical trees, bin edges and feature infos; only the echoed parameter list differs (data_random_seed).
    trees = [m.split("\nparameters:\n")[0] for m in models]
    assert "Tree=29" in trees[0] and trees[0] == trees[1]


def _traced_peak_of_build(features: Path, streamed: bool) -> tuple[int, int, int]:
    """Peak bytes traced while building (and binning) the training Dataset, the float32 matrix size, rows."""
    names, categorical, cats = _inputs(features)
    params = {**lgb_params(small_config(), "binary"), "bin_construct_sample_cnt": 500}
    train = scan_splits(list_shards(features), names, cats)[TRAIN]
    for seq in train.sequences:
        seq.batch_size = 256  # below every shard's row count, so both sizes push full batches
    y, w = train.labels_weights()  # per-row label/weight are inputs, allocated before tracing
    matrix_bytes = train.n * len(names) * 4
    tracemalloc.start()
    try:
        if streamed:
            ds = sequence_dataset(train, y, w, names, categorical, params=params).construct()
        else:
            X = _train_rows_in_memory(features, names, cats)[0]
            ds = lgb.Dataset(X, label=y, weight=w, feature_name=names, categorical_feature=categorical)
            ds.construct()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ds.num_data() == train.n
    return peak, matrix_bytes, train.n


@pytest.mark.parametrize("layout", ["row groups", "one row group per shard"])
def test_streamed_dataset_build_memory_does_not_grow_with_rows(tmp_path: Path, layout: str):
    # 4x the rows as 4x the shards of the same size; the pipeline writes each feature shard as one row group
    # (no sequence may keep its shard decoded once LightGBM has moved on to the next one).
    rg = 1000 if layout == "row groups" else 1_000_000
    small = write_features_dataset(synth_frame(1500, 1), tmp_path / "small", n_shards=3, row_group_size=rg)
    large = write_features_dataset(synth_frame(6000, 1), tmp_path / "large", n_shards=12, row_group_size=rg)
    _traced_peak_of_build(small, streamed=True)  # first use imports Parquet readers: not part of the build
    peak_small, _, n_small = _traced_peak_of_build(small, streamed=True)
    peak_large, matrix_large, n_large = _traced_peak_of_build(large, streamed=True)
    assert n_large > 3.5 * n_small
    # The streamed peak is the bin sample + one decoded row group + one batch; what grows with rows is
    # LightGBM's Python copy of the label (4 bytes a row) and a weight check (1 byte), never the features
    # (4 bytes x 10 features a row as float32).
    per_row = (peak_large - peak_small) / (n_large - n_small)
    assert per_row < 8, (peak_small, peak_large, per_row)
    assert peak_large < 0.5 * matrix_large
    # The tracer does see a full matrix: the in-memory build of the same rows peaks above its size.
    peak_in_memory, _, _ = _traced_peak_of_build(large, streamed=False)
    assert peak_in_memory >= matrix_large
