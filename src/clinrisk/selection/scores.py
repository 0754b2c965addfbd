"""Weighted scores of a sample: AP, Brier, and the AP of a binned feature (the univariate ranking)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    pass
from clinrisk.selection.sampling import F64, I64


def weighted_ap(y: F64, score: F64, w: F64) -> float:
    """Average precision (soft labels and weights allowed), via ``clinrisk.metrics``."""
    from clinrisk.metrics import average_precision

    return float(average_precision(y, score, sample_weight=w))


def weighted_brier(y: F64, p: F64, w: F64) -> float:
    """Weighted mean squared error of the risk."""
    return float(np.sum(w * (p - y) ** 2) / np.sum(w))


def binned_ap(bins: I64, n_bins: int, y: F64, w: F64) -> float:
    """Univariate AP of a binned feature scored by its bins' mean label (direction-free, missing = a bin).

    Exact AP over the ≤ ``n_bins`` distinct scores (tied scores form one threshold, as in sklearn).
    """
    pos = np.bincount(bins, weights=w * y, minlength=n_bins)
    tot = np.bincount(bins, weights=w, minlength=n_bins)
    used = tot > 0
    pos, tot = pos[used], tot[used]
    score = pos / tot
    uniq, inv = np.unique(-score, return_inverse=True)  # descending score
    tp = np.bincount(inv, weights=pos, minlength=uniq.size).cumsum()
    n = np.bincount(inv, weights=tot, minlength=uniq.size).cumsum()
    if tp[-1] <= 0:
        return 0.0
    recall = tp / tp[-1]
    precision = tp / n
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
