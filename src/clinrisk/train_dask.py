"""``train.engine: dask``: the LightGBM booster trained by ``lightgbm.dask`` on a ``dask.distributed`` cluster.

The cluster is a ``LocalCluster`` of ``train.dask_workers`` worker processes over loopback, started for the
fit and closed after it (``train.dask.cluster: local``), or a DaskCluster created through the Dask Kubernetes
operator for the fit and deleted after it (``kubernetes``, clinrisk.dask_k8s).
Each worker reads its own shards' selected rows (``ShardSequence`` slices as delayed chunks), so the
driver never holds the training matrix.

Early stopping: ``lightgbm.dask`` does not support it (workers hold different validation parts and hang or
disagree; LightGBM issues #3712, #4189, #6351). The dask engine therefore grows the full
``train.num_boost_round`` trees and then replays LightGBM's early-stopping rule in the driver on the
early-stopping part of the validation split, tree by tree, and keeps the same best iteration the callback
would have chosen from that curve. The extra trees are the engine's cost, reported in the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clinrisk.errors import StageError

if TYPE_CHECKING:
    import lightgbm as lgb

    from clinrisk.config.modeling import DaskConfig
    from clinrisk.train import ShardSequence

FloatArray = npt.NDArray[np.float64]
# Parameters the sklearn/dask wrapper takes as its own arguments (passing them twice warns or fails).
_WRAPPER_OWNED = ("num_threads", "verbosity", "metric", "first_metric_only")


def _all_rows(seq: ShardSequence) -> npt.NDArray[np.float32]:
    """The selected rows of one shard as one float32 matrix (runs on a worker)."""
    return np.asarray(seq[0 : len(seq)], dtype=np.float32)


def _stack(seqs: list[ShardSequence], n_features: int) -> Any:
    import dask
    import dask.array as da

    parts = [
        da.from_delayed(dask.delayed(_all_rows)(s), shape=(len(s), n_features), dtype=np.float32)
        for s in seqs
        if len(s)
    ]
    return da.concatenate(parts, axis=0)


def _weighted_logloss_sum(y: FloatArray, w: FloatArray, z: FloatArray) -> float:
    """Σ w·(binary log loss of logits ``z``): LightGBM's binary_logloss and cross_entropy metrics are this sum
    over Σ w (soft labels allowed)."""
    log_p = -np.logaddexp(0.0, -z)
    log_1p = -np.logaddexp(0.0, z)
    return float(-np.sum(w * (y * log_p + (1 - y) * log_1p)))


def early_stopping_iteration(scores: Callable[[int], float], n_trees: int, rounds: int) -> int:
    """LightGBM's early-stopping rule replayed on a metric curve (lower is better): the 1-based best
    iteration at the point the callback would have stopped (no strict improvement for ``rounds``)."""
    best, best_i = math.inf, 0
    for i in range(n_trees):
        s = scores(i)
        if s < best:
            best, best_i = s, i
        elif i - best_i >= rounds:
            break
    return best_i + 1


# Trees scored per pass over the early-stopping shards: the driver holds one shard's rows at a time, so its
# memory does not grow with the early-stopping rows; the passes stop once the callback would have stopped.
STOP_TREES_PER_PASS = 64


def best_iteration(
    booster: lgb.Booster,
    stop_seqs: list[ShardSequence],
    y: FloatArray,
    w: FloatArray,
    rounds: int,
    trees_per_pass: int = STOP_TREES_PER_PASS,
) -> int:
    """The early-stopping iteration of ``booster`` on the early-stopping rows (tree-by-tree raw scores).

    ``y`` and ``w`` are the early-stopping rows in ``stop_seqs`` order. The rows are read shard by shard,
    ``trees_per_pass`` trees at a time: only the raw-score vector (8 bytes a row) lives across shards, never
    the feature matrix."""
    seqs = [s for s in stop_seqs if len(s)]
    bounds = np.cumsum([0] + [len(s) for s in seqs])
    if bounds[-1] != len(y) or len(w) != len(y):
        raise StageError(
            f"early-stopping rows: {bounds[-1]} in the shards, {len(y)} labels, {len(w)} weights"
        )
    n_trees = booster.num_trees()
    z = np.zeros(len(y))
    curve: list[float] = []  # the metric after each tree, filled a pass at a time

    def next_pass() -> None:
        first, last = len(curve), min(len(curve) + trees_per_pass, n_trees)
        loss = np.zeros(last - first)
        for k, seq in enumerate(seqs):
            X = _all_rows(seq)
            lo, hi = bounds[k], bounds[k + 1]
            zs, ys, ws = z[lo:hi], y[lo:hi], w[lo:hi]
            for i in range(first, last):
                zs += np.asarray(booster.predict(X, start_iteration=i, num_iteration=1, raw_score=True))
                loss[i - first] += _weighted_logloss_sum(ys, ws, zs)
            del X
        curve.extend((loss / np.sum(w)).tolist())

    def score(i: int) -> float:
        while len(curve) <= i:
            next_pass()
        return curve[i]

    return early_stopping_iteration(score, n_trees, rounds)


@contextmanager
def dask_client(n_workers: int, threads: int, cluster_cfg: DaskConfig | None) -> Iterator[Any]:
    """A ``distributed.Client`` on the cluster ``train.dask.cluster`` names, closed (and the cluster torn
    down) when the block ends: a LocalCluster over loopback, or a DaskCluster on Kubernetes (dask_k8s)."""
    from distributed import Client, LocalCluster

    if cluster_cfg is None or cluster_cfg.cluster == "local":
        with (
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    from clinrisk.dask_k8s import kubernetes_dask_cluster

    with kubernetes_dask_cluster(cluster_cfg, n_workers) as address:
        try:
            client = Client(address, timeout=f"{cluster_cfg.timeout_s}s")
        except (OSError, TimeoutError) as exc:
            raise StageError(
                f"train.dask: cannot connect to the dask scheduler at {address} ({exc})"
            ) from exc
        with client:
            try:
                client.wait_for_workers(n_workers, timeout=cluster_cfg.timeout_s)
            except (OSError, TimeoutError) as exc:
                raise StageError(
                    f"train.dask.timeout_s: {n_workers} dask workers did not join {address} within "
                    f"{cluster_cfg.timeout_s:g}s"
                ) from exc
            yield client


def fit_dask(
    params: dict[str, Any],
    train_seqs: list[ShardSequence],
    label: npt.NDArray[np.floating[Any]],
    weight: npt.NDArray[np.floating[Any]],
    feature_names: list[str],
    categorical: list[str],
    num_boost_round: int,
    n_workers: int,
    cluster_cfg: DaskConfig | None = None,
) -> lgb.Booster:
    """Grow ``num_boost_round`` trees with ``lightgbm.dask`` on a fresh dask cluster; the booster."""
    import dask.array as da
    import lightgbm as lgb

    # Each worker's LightGBM uses its worker's threads (lightgbm.dask sets num_threads from them).
    threads = max(1, int(params.get("num_threads", 1)) // n_workers)
    model_params = {k: v for k, v in params.items() if k not in _WRAPPER_OWNED}
    kind = "local" if cluster_cfg is None else cluster_cfg.cluster
    try:
        with dask_client(n_workers, threads, cluster_cfg) as client:
            X = _stack(train_seqs, len(feature_names))
            chunks = X.chunks[0]
            y = da.from_array(label, chunks=(chunks,))
            w = da.from_array(weight, chunks=(chunks,))
            model = lgb.DaskLGBMRegressor(
                client=client,
                n_estimators=num_boost_round,
                verbosity=-1,
                **model_params,
            )
            model.fit(X, y, sample_weight=w, feature_name=feature_names, categorical_feature=categorical)
            return model.booster_
    except (OSError, TimeoutError) as exc:
        raise StageError(f"train.engine=dask: the {kind} dask cluster failed ({exc})") from exc
