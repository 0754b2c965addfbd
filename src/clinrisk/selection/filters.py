"""The cheap filters (step 2): missingness, near-constant columns, correlation clusters by Spearman |rho|."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    pass
from clinrisk.selection.sampling import F32, F64, I64
from clinrisk.selection.scores import binned_ap

_UNIVARIATE_BINS = 32
_MIN_PAIR_ROWS = 30  # fewer overlapping rows: correlation unknown, never clustered
_CORR_BLOCK_ROWS = 65_536


# ------------------------------------------------------------------------------------------- filters


@dataclass
class FilterResult:
    """Per-feature filter decisions and the survivors (spec order)."""

    kept: list[str]
    decisions: dict[str, dict[str, Any]]
    clusters: list[list[str]] = field(default_factory=list)


def _column_stats(col: F32, is_cat: bool) -> tuple[float, float, F32 | None, I64]:
    """(missing share, mode share, centred ranks or None if constant, univariate bin per row)."""
    n = col.size
    present = ~np.isnan(col)
    vals = col[present]
    m = vals.size
    bins = np.full(n, _UNIVARIATE_BINS if not is_cat else 0, dtype=np.int64)
    if m == 0:
        return 1.0, 1.0, None, bins
    order = np.argsort(vals, kind="stable")
    s = vals[order]
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    runs = np.diff(np.concatenate([starts, [m]]))
    mode_share = float(runs.max() / m)
    # average ranks of ties (1-based), centred and scaled to about [-0.5, 0.5] for float32 precision
    avg = starts + (runs + 1) / 2.0
    ranks_sorted = np.repeat(avg, runs)
    ranks = np.empty(m, dtype=np.float64)
    ranks[order] = ranks_sorted
    z = np.zeros(n, dtype=np.float32)
    z[present] = ((ranks - (m + 1) / 2.0) / m).astype(np.float32)
    if is_cat:
        codes = vals.astype(np.int64)
        bins = np.full(n, int(codes.max()) + 1, dtype=np.int64)  # missing = one past the last code
        bins[present] = codes
    else:
        bins[present] = np.minimum(
            ((ranks - 1) * _UNIVARIATE_BINS / m).astype(np.int64), _UNIVARIATE_BINS - 1
        )
    return 1.0 - m / n, mode_share, (z if starts.size > 1 else None), bins


def pairwise_spearman(X: F32, Z: F32, cols: Sequence[int]) -> tuple[F64, F64]:
    """|ρ| matrix over ``cols`` (Pearson on centred ranks ``Z`` using only rows where both are present)
    and the co-presence matrix: rows where both are present / rows where either one is (Jaccard).

    Accumulates N, Σx, Σx², Σxy over row blocks, so no extra n × p array is materialised.
    """
    c = list(cols)
    k = len(c)
    N = np.zeros((k, k))
    Sx = np.zeros((k, k))
    Sxx = np.zeros((k, k))
    Sxy = np.zeros((k, k))
    for a in range(0, X.shape[0], _CORR_BLOCK_ROWS):
        b = min(a + _CORR_BLOCK_ROWS, X.shape[0])
        Mb = (~np.isnan(X[a:b][:, c])).astype(np.float32)
        Zb = Z[a:b][:, c]
        N += Mb.T @ Mb
        Sx += Zb.T @ Mb  # Σ z_i over rows where j present
        Sxx += (Zb * Zb).T @ Mb
        Sxy += Zb.T @ Zb  # missing z are 0
    num = N * Sxy - Sx * Sx.T
    var_i = N * Sxx - Sx * Sx
    den = np.sqrt(np.clip(var_i, 0, None) * np.clip(var_i.T, 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where((den > 0) & (N >= _MIN_PAIR_ROWS), num / den, 0.0)
    r = np.clip(np.abs(r), 0.0, 1.0)
    np.fill_diagonal(r, 1.0)
    n_i = np.diag(N)
    union = n_i[:, None] + n_i[None, :] - N
    with np.errstate(invalid="ignore", divide="ignore"):
        co = np.where(union > 0, N / union, 1.0)
    return np.asarray(r, dtype=np.float64), np.asarray(co, dtype=np.float64)


def cheap_filters(
    X: F32,
    y: F64,
    w: F64,
    names: Sequence[str],
    categorical: set[str],
    *,
    max_missing_share: float,
    near_constant_share: float,
    correlation_threshold: float,
    min_copresence: float = 0.0,
) -> FilterResult:
    """Missing / constant / near-constant / correlated filters on the sample (docs/science.md §5.2 step 4).

    Two features are redundant only if |ρ| ≥ ``correlation_threshold`` on the rows where both are present
    AND they are present on nearly the same rows (co-presence Jaccard ≥ ``min_copresence``): ``hba1c_locf``
    equals ``hba1c_last_3y`` wherever both exist, but carries a value on many more rows, so dropping it
    would lose information that the rank correlation cannot see.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n, p = X.shape
    decisions: dict[str, dict[str, Any]] = {}
    Z = np.zeros((n, p), dtype=np.float32, order="F")
    survivors: list[int] = []
    for j, name in enumerate(names):
        miss, mode_share, z, bins = _column_stats(X[:, j], name in categorical)
        d: dict[str, Any] = {"missing_share": round(miss, 6), "mode_share": round(mode_share, 6)}
        decisions[name] = d
        if miss > max_missing_share:
            d.update(decision="dropped", reason="missing")
            continue
        if z is None:
            d.update(decision="dropped", reason="constant")
            continue
        if mode_share >= near_constant_share:
            d.update(decision="dropped", reason="near_constant")
            continue
        d["univariate_ap"] = round(binned_ap(bins, int(bins.max()) + 1, y, w), 6)
        Z[:, j] = z
        survivors.append(j)

    clusters: list[list[str]] = []
    kept = set(survivors)
    if len(survivors) > 1:
        R, co = pairwise_spearman(X, Z, survivors)
        del Z
        D = np.where(co >= min_copresence, 1.0 - R, 1.0)
        np.fill_diagonal(D, 0.0)
        dist = squareform(D, checks=False)
        labels = fcluster(
            linkage(dist, method="complete"), t=1.0 - correlation_threshold, criterion="distance"
        )
        for lab in np.unique(labels):
            members = [i for i, lb in enumerate(labels) if lb == lab]
            if len(members) < 2:
                continue
            # best univariate AP (to 3 decimals), then least missing, then spec order
            best = min(
                members,
                key=lambda i: (
                    -round(decisions[names[survivors[i]]]["univariate_ap"], 3),
                    decisions[names[survivors[i]]]["missing_share"],
                    survivors[i],
                ),
            )
            keep_name = names[survivors[best]]
            clusters.append([keep_name, *[names[survivors[i]] for i in members if i != best]])
            for i in members:
                if i == best:
                    continue
                nm = names[survivors[i]]
                decisions[nm].update(
                    decision="dropped",
                    reason="correlated",
                    correlated_with=keep_name,
                    rho=round(float(R[i, best]), 6),
                )
                kept.discard(survivors[i])
    for j in kept:
        decisions[names[j]]["decision"] = "kept"
    return FilterResult([names[j] for j in sorted(kept)], decisions, clusters)
