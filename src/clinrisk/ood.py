"""Out-of-distribution detector, fit on training rows at training time and stored in the bundle.

Method ("range-excess"): for every checked feature j (numeric, not a 0/1 indicator, not categorical, not a
calendar-trend feature such as age or years-since, which leave their range by construction), the training
range [min_j, max_j] and a robust spread s_j = q99.5_j - q0.5_j. A row's per-feature excess is
``max(x - max_j, min_j - x) / s_j`` (<= 0 inside the training range; missing values are never flagged); its
score is the largest excess over the checked features, and it is flagged when the score exceeds a threshold
``t``. ``t`` is calibrated on training data only: ranges from one half of the training sample, the
(1 - ``TARGET_FPR``) quantile of the other half's scores, never below 0. The final ranges come from the
whole sample, which can only lower the false-positive rate.

The bundle records the false-positive rate on the validation split (held out from the fit) and the
detection rate on a planted set: validation rows with one checked feature, chosen at random, moved to
``max_j + PLANT_EXCESS * s_j`` (a value half a robust spread beyond anything seen in training). Only
single-feature excursions are detected; an implausible *combination* of in-range values is not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

METHOD = "range-excess"
TARGET_FPR = 0.005
PLANT_EXCESS = 0.5
SAMPLE_ROWS = 100_000
LOW_Q, HIGH_Q = 0.005, 0.995
SKIP_DTYPES = frozenset(("Enum", "Int8", "Boolean", "Categorical"))


def checked_features(
    feature_names: Sequence[str],
    dtypes: dict[str, str],
    categorical: Sequence[str],
    trend_patterns: Sequence[str],
) -> list[str]:
    """Features the detector checks (see module doc)."""
    from clinrisk.drift import is_calendar_trend

    cats = set(categorical)
    return [
        n
        for n in feature_names
        if n not in cats
        and dtypes.get(n) not in SKIP_DTYPES
        and not is_calendar_trend(n, list(trend_patterns))
    ]


def sample_rows(sequences: Sequence[Any], n_max: int, seed: int) -> npt.NDArray[np.float64]:
    """Up to ``n_max`` rows drawn without replacement from row sequences (``len`` + ``take(indices)``)."""
    lengths = [len(s) for s in sequences]
    total = int(sum(lengths))
    width = None
    rng = np.random.default_rng(seed)
    idx = (
        np.sort(rng.choice(total, size=min(n_max, total), replace=False)) if total else np.zeros(0, np.int64)
    )
    blocks, off = [], 0
    for s, n in zip(sequences, lengths, strict=True):
        sel = idx[(idx >= off) & (idx < off + n)] - off
        if sel.size:
            block = np.asarray(s.take(sel.astype(np.int64)), dtype=np.float64)
            width = block.shape[1]
            blocks.append(block)
        off += n
    return np.concatenate(blocks) if blocks else np.zeros((0, width or 0), np.float64)


def _ranges(X: npt.NDArray[np.float64]) -> dict[str, npt.NDArray[np.float64]]:
    with np.errstate(all="ignore"):
        lo = np.nanmin(X, axis=0) if X.size else np.zeros(X.shape[1])
        hi = np.nanmax(X, axis=0) if X.size else np.zeros(X.shape[1])
        q_lo = np.nanquantile(X, LOW_Q, axis=0) if X.size else lo
        q_hi = np.nanquantile(X, HIGH_Q, axis=0) if X.size else hi
    spread = q_hi - q_lo
    full = hi - lo
    # A feature nearly constant in its central 99 % (mostly zeros) uses its full range; a constant one 1.
    spread = np.where(
        np.isfinite(spread) & (spread > 0), spread, np.where(np.isfinite(full) & (full > 0), full, 1.0)
    )
    lo = np.where(np.isfinite(lo), lo, -np.inf)
    hi = np.where(np.isfinite(hi), hi, np.inf)
    return {"min": lo, "max": hi, "spread": spread}


def excess(X: npt.NDArray[np.floating[Any]], lo: Any, hi: Any, spread: Any) -> npt.NDArray[np.float64]:
    """Per-feature excess over the training range in robust spreads (NaN -> -inf: never flagged)."""
    V = np.asarray(X, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        e = np.maximum(V - hi, lo - V) / spread
    return np.where(np.isfinite(V), e, -np.inf)


def row_scores(E: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return E.max(axis=1) if E.shape[1] else np.full(E.shape[0], -np.inf)


def fit_detector(
    X_train: npt.NDArray[np.float64],
    X_holdout: npt.NDArray[np.float64],
    names: list[str],
    seed: int,
    *,
    holdout_split: str = "validation",
) -> dict[str, Any]:
    """Fit on training rows (columns = ``names``), measure on held-out rows; returns the bundle's JSON."""
    rng = np.random.default_rng(seed)
    n = X_train.shape[0]
    half = rng.permutation(n)
    a, b = X_train[half[: n // 2]], X_train[half[n // 2 :]]
    ra = _ranges(a)
    cal = row_scores(excess(b, ra["min"], ra["max"], ra["spread"]))
    cal = cal[np.isfinite(cal)]
    threshold = max(float(np.quantile(cal, 1.0 - TARGET_FPR)), 0.0) if cal.size else 0.0
    r = _ranges(X_train)
    det: dict[str, Any] = {
        "method": METHOD,
        "features": list(names),
        "min": [_num(v) for v in r["min"]],
        "max": [_num(v) for v in r["max"]],
        "spread": [_num(v) for v in r["spread"]],
        "threshold": threshold,
        "target_fpr": TARGET_FPR,
        "fit_rows": int(n),
    }
    det["rates"] = detector_rates(det, X_holdout, seed, split=holdout_split)
    return det


def detector_rates(
    det: dict[str, Any],
    X_holdout: npt.NDArray[np.float64],
    seed: int,
    split: str,
    plant_excess: float = PLANT_EXCESS,
) -> dict[str, Any]:
    """False-positive rate on in-distribution held-out rows and detection rate on the planted set."""
    lo, hi, spread = _arrays(det)
    t = float(det["threshold"])
    s = row_scores(excess(X_holdout, lo, hi, spread))
    rng = np.random.default_rng(seed + 1)
    planted = np.array(X_holdout, dtype=np.float64, copy=True)
    p = planted.shape[1]
    finite_hi = np.isfinite(hi)
    cols = np.flatnonzero(finite_hi)
    if planted.shape[0] and cols.size:
        j = rng.choice(cols, size=planted.shape[0])
        planted[np.arange(planted.shape[0]), j] = hi[j] + plant_excess * spread[j]
    sp = row_scores(excess(planted, lo, hi, spread)) if p else np.zeros(0)
    return {
        "holdout_split": split,
        "holdout_rows": int(s.size),
        "false_positive_rate": float(np.mean(s > t)) if s.size else None,
        "planted_rows": int(sp.size),
        "planted_detection_rate": float(np.mean(sp > t)) if sp.size else None,
        "planted": f"one random checked feature set to max + {plant_excess} x (q99.5 - q0.5) of training",
    }


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(float(v)) else None


def _arrays(det: dict[str, Any]) -> tuple[npt.NDArray[np.float64], ...]:
    def arr(key: str, missing: float) -> npt.NDArray[np.float64]:
        return np.asarray([missing if v is None else v for v in det[key]], dtype=np.float64)

    return arr("min", -np.inf), arr("max", np.inf), arr("spread", 1.0)


class OODDetector:
    """A fitted detector applied to model matrices (columns in the bundle's feature order)."""

    def __init__(self, det: dict[str, Any], feature_names: Sequence[str]) -> None:
        pos = {n: j for j, n in enumerate(feature_names)}
        self.names = [n for n in det["features"] if n in pos]
        keep = [i for i, n in enumerate(det["features"]) if n in pos]
        self.index = np.asarray([pos[n] for n in self.names], dtype=np.int64)
        lo, hi, spread = _arrays(det)
        self.lo, self.hi, self.spread = lo[keep], hi[keep], spread[keep]
        self.threshold = float(det["threshold"])
        self.info = {
            k: det[k] for k in ("method", "threshold", "target_fpr", "fit_rows", "rates") if k in det
        }

    def flags(self, X: npt.NDArray[np.floating[Any]]) -> list[list[str]]:
        """Per row: the checked features whose excess passes the threshold (empty = in distribution)."""
        if self.index.size == 0:
            return [[] for _ in range(X.shape[0])]
        E = excess(X[:, self.index], self.lo, self.hi, self.spread)
        bad = self.threshold < E
        return [[self.names[j] for j in np.flatnonzero(row)] if row.any() else [] for row in bad]


def fit_from_splits(
    train_sequences: Sequence[Any],
    holdout_sequences: Sequence[Any],
    feature_names: list[str],
    dtypes: dict[str, str],
    categorical: Sequence[str],
    trend_patterns: Sequence[str],
    seed: int,
) -> dict[str, Any]:
    """Training-time entry point: sample training and validation rows, fit, measure (bundle JSON)."""
    names = checked_features(feature_names, dtypes, categorical, trend_patterns)
    cols = [feature_names.index(n) for n in names]
    X_tr = sample_rows(train_sequences, SAMPLE_ROWS, seed)
    X_ho = sample_rows(holdout_sequences, SAMPLE_ROWS, seed + 7)
    X_tr = X_tr[:, cols] if X_tr.size else np.zeros((0, len(cols)))
    X_ho = X_ho[:, cols] if X_ho.size else np.zeros((0, len(cols)))
    return fit_detector(X_tr, X_ho, names, seed)
