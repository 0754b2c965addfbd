"""``train.engine: dask`` (issue 20): lightgbm.dask on a 2-worker dask.distributed LocalCluster over loopback.

The distributed model must score the held-out test split within 0.002 AUC of the single-process model on
the same data, and the early-stopping rule replayed in the driver must match LightGBM's callback.
"""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from clinrisk import metrics as M
from clinrisk.bundle import load_bundle
from clinrisk.errors import StageError
from clinrisk.evaluate import load_test_frame
from clinrisk.train import train_model
from clinrisk.train_dask import best_iteration, early_stopping_iteration
from tests.model.conftest import make_features_dataset, small_config


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The dask scheduler decides which worker holds which chunk, and LightGBM's data-parallel bins follow
    # the partition, so the distributed model differs run to run. At 3,000 patients that alone moved test
    # AUC by up to 0.0029 (4 of 6 runs within 0.002); at 8,000 by at most 0.0009 in 4 runs.
    return make_features_dataset(tmp_path_factory.mktemp("dask") / "features", n_patients=8000, seed=7)


def _test_auc(bundle_dir: Path, features_dir: Path) -> float:
    bundle = load_bundle(bundle_dir)
    df = load_test_frame(features_dir)
    y = df["label"].cast(pl.Float64).to_numpy()
    return M.roc_auc(y, bundle.predict_proba(df))


def test_dask_engine_matches_single_process_auc(features_dir: Path, tmp_path: Path) -> None:
    local = train_model(small_config(), features_dir, tmp_path / "local")
    dask = train_model(
        small_config(None, "train.engine=dask", "train.dask_workers=2"), features_dir, tmp_path / "dask"
    )
    auc_local, auc_dask = (
        _test_auc(tmp_path / "local", features_dir),
        _test_auc(tmp_path / "dask", features_dir),
    )
    assert auc_local > 0.7  # a model that learned something, so the comparison means something
    assert abs(auc_dask - auc_local) <= 0.002, (auc_local, auc_dask)
    assert dask["metadata"]["num_trees"] >= 1
    assert local["metadata"]["lgb_params"] == dask["metadata"]["lgb_params"]


def test_replayed_early_stopping_matches_lightgbm_rule() -> None:
    curve = [5.0, 4.0, 3.0, 3.5, 2.9, 3.0, 3.1, 3.2, 2.0]
    # best so far 2.9 at index 4; with patience 3 the callback stops at index 7, before the 2.0
    assert early_stopping_iteration(lambda i: curve[i], len(curve), rounds=3) == 5
    assert early_stopping_iteration(lambda i: curve[i], len(curve), rounds=10) == 9
    assert early_stopping_iteration(lambda i: float(np.inf), 4, rounds=2) == 1


class _RowsSeq:
    """The part of ShardSequence that best_iteration reads (len and a row slice), counting the matrices it
    hands out that are still alive."""

    live = 0
    max_live = 0
    reads = 0

    def __init__(self, X: np.ndarray) -> None:
        self.X = X

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, rows: slice) -> np.ndarray:
        import weakref

        out = np.array(self.X[rows], dtype=np.float32)
        cls = type(self)
        cls.reads += 1
        cls.live += 1
        cls.max_live = max(cls.max_live, cls.live)
        weakref.finalize(out, lambda: setattr(cls, "live", cls.live - 1))
        return out


def _shards_and_booster(rounds: int) -> tuple[list[_RowsSeq], np.ndarray, np.ndarray, int, lgb.Booster]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6000, 5))
    y = (rng.random(6000) < 1 / (1 + np.exp(-(X[:, 0] - 0.5 * X[:, 1])))).astype(np.float64)
    w = rng.uniform(0.5, 2.0, 6000)
    Xt, yt, wt, Xs, ys, ws = X[:4000], y[:4000], w[:4000], X[4000:], y[4000:], w[4000:]
    params = {"objective": "binary", "metric": "binary_logloss", "learning_rate": 0.3, "num_leaves": 63,
              "min_data_in_leaf": 5, "verbosity": -1, "num_threads": 1, "seed": 1, "deterministic": True}  # fmt: skip
    train = lgb.Dataset(Xt, yt, weight=wt, free_raw_data=False)
    valid = lgb.Dataset(Xs, ys, weight=ws, reference=train)
    stopped = lgb.train(
        params, train, 300, valid_sets=[valid], callbacks=[lgb.early_stopping(rounds, verbose=False)]
    )
    full = lgb.train(params, train, 300)
    shards = [_RowsSeq(Xs[a:b]) for a, b in ((0, 700), (700, 700), (700, 1500), (1500, 2000))]
    return shards, ys, ws, stopped.best_iteration, full


@pytest.mark.parametrize("trees_per_pass", [1, 7, 64, 1000])
def test_streamed_early_stopping_matches_lightgbm_callback(trees_per_pass: int) -> None:
    shards, ys, ws, expected, full = _shards_and_booster(rounds=10)
    assert 1 < expected < full.num_trees()  # the callback stopped early, so the replay is tested
    _RowsSeq.reads = _RowsSeq.max_live = _RowsSeq.live = 0
    assert best_iteration(full, shards, ys, ws, 10, trees_per_pass=trees_per_pass) == expected  # type: ignore[arg-type]
    # One shard's rows in memory at a time, never the early-stopping matrix.
    assert _RowsSeq.max_live == 1
    # Passes stop once the callback would have stopped (it needs the curve up to tree best + rounds).
    passes = _RowsSeq.reads // 3  # three non-empty shards per pass
    needed = min(expected + 10, full.num_trees())
    assert passes == -(-needed // trees_per_pass)


def test_best_iteration_refuses_labels_that_do_not_match_the_shards() -> None:
    shards, ys, ws, _, full = _shards_and_booster(rounds=10)
    with pytest.raises(StageError, match="early-stopping rows: 2000 in the shards, 1999 labels"):
        best_iteration(full, shards, ys[:-1], ws[:-1], 10)  # type: ignore[arg-type]
