"""The train step's out-of-core Dataset: the streamed (``lgb.Sequence`` per shard) Dataset trains the same
model as an in-memory matrix of the same rows, and building it holds no full copy of the feature matrix
(its traced peak does not grow with rows)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from clinrisk.bundle import features_to_matrix
from clinrisk.feature_table import FeatureSpec
from clinrisk.io import list_shards
from clinrisk.train import TRAIN, budget_draw, lgb_params, scan_splits, sequence_dataset
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


# --------------------------------------------------------------------------------- the training-row budget


def _indexed_features(root: Path, n_patients: int = 1500) -> Path:
    """A features dataset whose ``ldl_mean_3y`` is the row's number and whose weight is that number + 1, so
    a row's features and its label/weight can be matched after sampling."""
    df = synth_frame(n_patients, 2)
    idx = np.arange(df.height, dtype=np.float32)
    df = df.with_columns(
        pl.Series("ldl_mean_3y", idx, dtype=pl.Float32), pl.Series("sample_weight", idx + 1, dtype=pl.Float32)
    )
    return write_features_dataset(df, root, n_shards=3, row_group_size=700)


def _row_numbers(split: Any, names: list[str]) -> np.ndarray:
    return np.concatenate([X[:, names.index("ldl_mean_3y")] for s in split.sequences for X in s.matrices()])


def test_row_budget_draws_exactly_the_budget_and_keeps_rows_aligned(tmp_path: Path):
    features = _indexed_features(tmp_path / "features")
    names, _, cats = _inputs(features)
    shards = list_shards(features)
    full = scan_splits(shards, names, cats)[TRAIN]
    within = scan_splits(shards, names, cats, max_train_rows=full.n, seed=7)[TRAIN]
    assert within.drawn_from is None and within.n == full.n  # within the budget: every row
    sample = scan_splits(shards, names, cats, max_train_rows=2000, seed=7)[TRAIN]
    assert sample.n == 2000 and sample.drawn_from == full.n
    label, weight = sample.labels_weights()
    assert len(label) == len(weight) == 2000  # no per-row bookkeeping for the rows left out
    # the budget's rows are the seeded draw's positions among all training rows in file order
    rows = _row_numbers(sample, names)
    keep = budget_draw(full.n, 2000, seed=7)
    np.testing.assert_array_equal(rows, _row_numbers(full, names)[keep])
    np.testing.assert_array_equal(rows + 1, weight)  # each label/weight belongs to the row LightGBM reads
    np.testing.assert_array_equal(full.labels_weights()[0][keep], label)
    for seq in sample.sequences:  # file order kept within a shard (rows are numbered in file order)
        assert np.all(np.diff(np.concatenate(list(seq.matrices()))[:, names.index("ldl_mean_3y")]) > 0)
    # seeded: the same seed draws the same rows, another seed others
    again = scan_splits(shards, names, cats, max_train_rows=2000, seed=7)[TRAIN]
    other = scan_splits(shards, names, cats, max_train_rows=2000, seed=8)[TRAIN]
    np.testing.assert_array_equal(_row_numbers(again, names), rows)
    assert not np.array_equal(_row_numbers(other, names), rows)
    # LightGBM is handed the budget's rows and no more
    params = {**lgb_params(small_config(), "binary"), "bin_construct_sample_cnt": 500}
    ds = sequence_dataset(sample, label, weight, names, [], params=params).construct()
    assert ds.num_data() == 2000


def test_row_budget_bookkeeping_does_not_grow_with_rows(tmp_path: Path):
    """With a budget, the scan holds per-row bookkeeping for the budget's rows only, not every row's."""
    large = _indexed_features(tmp_path / "large", n_patients=6000)
    names, _, cats = _inputs(large)
    shards = list_shards(large)

    def traced_peak(**budget: int) -> tuple[int, int]:
        tracemalloc.start()
        try:
            train = scan_splits(shards, names, cats, **budget)[TRAIN]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return peak, train.n

    traced_peak()  # first use imports Parquet readers: not part of the scan
    peak_all, n_all = traced_peak()
    peak_budget, n_budget = traced_peak(max_train_rows=2000, seed=1)
    assert n_budget == 2000 < n_all / 10
    # every row left out saves at least its float32 label and weight (the validation parts, never sampled,
    # and one row group's columns are the rest of both peaks)
    assert peak_all - peak_budget >= 8 * (n_all - n_budget), (peak_budget, peak_all)


def test_row_budget_in_the_train_stage(tmp_path: Path):
    """Above the budget the bundle says how many rows it was fitted on, of how many, and is reproducible;
    within the budget the model is byte-identical to one with no budget."""
    import json

    from clinrisk.train import train_model

    features = write_features_dataset(synth_frame(1500, 4), tmp_path / "features")

    def fit(name: str, *sets: str) -> tuple[bytes, dict[str, Any]]:
        out = tmp_path / name
        train_model(small_config(None, *sets), features, out)
        return (out / "model.txt").read_bytes(), json.loads((out / "metadata.json").read_text())

    full, full_meta = fit("a", "train.max_rows=null")
    within, _ = fit("b")
    assert within == full
    available = full_meta["n_train_rows"]
    assert full_meta["train_max_rows"] is None and full_meta["n_train_rows_available"] == available
    (capped, meta), (again, _) = fit("c", "train.max_rows=2000"), fit("d", "train.max_rows=2000")
    assert meta["n_train_rows"] == 2000 < available
    assert meta["n_train_rows_available"] == available and meta["train_max_rows"] == 2000
    assert capped == again != full
    assert meta["n_validation_rows"] == full_meta["n_validation_rows"]  # validation is never sampled


@pytest.mark.parametrize(("n", "k"), [(1000, 300), (1000, 800), (1000, 1000), (50, 7)])
def test_budget_draw_is_a_seeded_uniform_subset(n: int, k: int):
    draws = [budget_draw(n, k, seed) for seed in range(400)]
    for d in draws:
        assert d.dtype == np.int64 and d.size == k and np.all(np.diff(d) > 0) and d[0] >= 0 and d[-1] < n
    np.testing.assert_array_equal(budget_draw(n, k, 3), draws[3])
    if k < n:
        assert not np.array_equal(draws[0], draws[1])
        # every position is kept with probability k/n: 400 draws give 400k/n expected inclusions each
        hits = np.bincount(np.concatenate(draws), minlength=n)
        expected = 400 * k / n
        sd = np.sqrt(400 * (k / n) * (1 - k / n))
        assert np.all(np.abs(hits - expected) < 6 * sd), (hits.min(), hits.max(), expected)
        assert abs(hits.mean() - expected) < 1e-9
