"""Pure, vectorised evaluation metrics (docs/science.md §1.9, §2.4, §4.2, §4.3, §8).

Every "batched" function takes row weights ``W`` of shape ``(b, n)`` and returns one value per weight row,
so the point estimate (``W = 1``) and a patient-cluster bootstrap (``W`` = how many times each row's patient
was drawn) run through the *same* code. Rows are sorted by score once per panel; all bootstrap replicates
reuse that order, which makes B = 200 replicates on 100k+ rows a few seconds.

Conventions: ``y`` is a 0/1 label (or a probability, for the label-draw-free metrics), ``p`` a predicted
risk in [0, 1]; an alert is ``p >= tau``. Metrics that are undefined (no positives, no alerts) are NaN.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from clinrisk.errors import DataError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Metrics computed per bootstrap replicate by :func:`metric_panel` (oracle ones only with ``p_oracle``).
PANEL_METRICS: tuple[str, ...] = (
    "prevalence",
    "mean_predicted",
    "auc",
    "ap",
    "ap_lift",
    "brier",
    "scaled_brier",
    "log_loss",
    "oe",
    "cal_intercept",
    "cal_slope",
    "net_benefit",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "alert_rate",
)
ORACLE_METRICS: tuple[str, ...] = ("expected_auc", "oracle_brier", "excess_brier")

_EPS = float(np.finfo(np.float64).eps)
# Cells per bootstrap chunk (b x n), the rows the bootstrap reads included (_chunks): bounds its peak
# memory at a few hundred MB whatever B and n are.
_CHUNK_CELLS = 4_000_000


# --------------------------------------------------------------------------------------------------- input


def _vec(x: Any, name: str) -> FloatArray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise DataError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{name}: contains NaN or infinite values")
    return a


def _check(y: Any, p: Any, *, y_name: str = "y", p_name: str = "p") -> tuple[FloatArray, FloatArray]:
    yy, pp = _vec(y, y_name), _vec(p, p_name)
    if yy.shape != pp.shape:
        raise DataError(f"{y_name}/{p_name}: length mismatch {yy.size} vs {pp.size}")
    if yy.size == 0:
        raise DataError(f"{y_name}: no rows to evaluate")
    if np.any((pp < 0) | (pp > 1)):
        raise DataError(f"{p_name}: probabilities must lie in [0, 1]")
    if np.any((yy < 0) | (yy > 1)):
        raise DataError(f"{y_name}: labels must lie in [0, 1]")
    return yy, pp


def _is_binary(y: FloatArray) -> bool:
    return bool(np.all((y == 0.0) | (y == 1.0)))


def _weights(w: Any, n: int) -> FloatArray:
    if w is None:
        return np.ones((1, n))
    a = np.asarray(w, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.shape[1] != n:
        raise DataError(f"sample_weight: expected {n} columns, got shape {a.shape}")
    if np.any(a < 0):
        raise DataError("sample_weight: negative weights")
    return a


def _div(num: FloatArray, den: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return np.asarray(out, dtype=np.float64)


# ------------------------------------------------------------------------------------------- ranking core


def descending_order(score: FloatArray) -> IntArray:
    """Row positions by descending score, ties in row order (a stable sort): the order every rank-based
    metric here reads rows in. Rows already in this order make :func:`bootstrap_replicates` copy nothing."""
    return np.argsort(-score, kind="mergesort").astype(np.int64)


@dataclass(frozen=True)
class _Ranked:
    """Rows sorted by descending score, with the start index of each tied-score group."""

    sort: IntArray | None  # None: rows already in descending-score order (skip the (b, n) gathers)
    starts: IntArray
    n: int

    @property
    def identity(self) -> bool:
        return self.sort is None

    @property
    def order(self) -> IntArray:
        """Row positions by descending score (:func:`descending_order`)."""
        return np.arange(self.n, dtype=np.int64) if self.sort is None else self.sort

    @classmethod
    def of(cls, score: FloatArray) -> _Ranked:
        if bool(np.all(score[1:] <= score[:-1])):  # already descending: the stable sort is the identity
            sort, s = None, score
        else:
            sort = descending_order(score)
            s = score[sort]
            if sort.size < 2 or bool(np.all(sort[1:] > sort[:-1])):
                sort = None
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]).astype(np.int64)
        return cls(sort, starts, score.size)

    def take(self, W: FloatArray, v: FloatArray) -> FloatArray:
        """W[:, order] * v[order], without copying W when already sorted."""
        if self.sort is None:
            return W * v
        return W[:, self.sort] * v[self.sort]

    def group(self, M: FloatArray) -> FloatArray:
        """Sum columns within tied-score groups (no-op when all scores are distinct)."""
        if self.starts.size == M.shape[1]:
            return M
        return np.add.reduceat(M, self.starts, axis=1)


def _pairwise_auc(ranked: _Ranked, pos: FloatArray, neg: FloatArray, W: FloatArray) -> FloatArray:
    """P(score_i > score_j) + ½ P(tie) over pairs weighted by pos_i·neg_j (i ≠ j), per weight row.

    With hard labels (pos = y, neg = 1 − y) this is the ROC-AUC; with pos = p, neg = 1 − p it is the
    expected AUC of docs/science.md §1.9 (the self-pair term removes i = j).
    """
    pg = ranked.group(ranked.take(W, pos))
    ng = ranked.group(ranked.take(W, neg))
    return _auc_of_groups(pg, ng, W @ (pos * neg))


def _auc_of_groups(pg: FloatArray, ng: FloatArray, self_pairs: FloatArray) -> FloatArray:
    """:func:`_pairwise_auc` from the grouped positive and negative weights."""
    n_tot = ng.sum(axis=1)
    # Σ_g P_g·(N strictly below g) = Σ_g P_g·(N_tot − cumN_g); the ½ tie term corrects the inclusive cumsum.
    n_cum = np.cumsum(ng, axis=1)
    num = pg.sum(axis=1) * n_tot - np.einsum("ij,ij->i", pg, n_cum)
    num += 0.5 * np.einsum("ij,ij->i", pg, ng) - 0.5 * self_pairs
    den = pg.sum(axis=1) * n_tot - self_pairs
    return _div(num, den)


def _ap_sorted(ranked: _Ranked, y: FloatArray, W: FloatArray) -> FloatArray:
    """Average precision Σ ΔRecall·Precision at each distinct threshold (sklearn's definition)."""
    pg = ranked.group(ranked.take(W, y))
    allg = ranked.group(W if ranked.sort is None else W[:, ranked.sort])
    return _ap_of_groups(pg, allg)


def _ap_of_groups(pg: FloatArray, allg: FloatArray) -> FloatArray:
    """:func:`_ap_sorted` from the grouped positive and total weights."""
    tp = np.cumsum(pg, axis=1)
    alerts = np.cumsum(allg, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(alerts > 0, tp / np.where(alerts > 0, alerts, 1.0), 0.0)
    return _div(np.einsum("ij,ij->i", pg, prec), pg.sum(axis=1))


def _auc_and_ap_counts(ranked: _Ranked, y: FloatArray, W: FloatArray) -> tuple[FloatArray, FloatArray]:
    """ROC-AUC and AP together, for 0/1 labels and integer weights (bootstrap counts): every grouped sum is
    then an exact integer, so the negatives' groups are all − positives (one grouping pass fewer) and the
    values are bit-identical to :func:`_pairwise_auc` and :func:`_ap_sorted`."""
    pg = ranked.group(ranked.take(W, y))
    allg = ranked.group(W if ranked.sort is None else W[:, ranked.sort])
    return _auc_of_groups(pg, allg - pg, W @ (y * (1.0 - y))), _ap_of_groups(pg, allg)


def _logistic_fit(
    x: FloatArray,
    y: FloatArray,
    W: FloatArray,
    *,
    fix_slope: bool,
    init: tuple[float, float] = (0.0, 1.0),
    iters: int = 30,
) -> tuple[FloatArray, FloatArray]:
    """Weighted logistic regression of y on x (intercept a, slope b), batched Newton–Raphson.

    ``fix_slope`` fits only ``a`` in ``logit P(Y) = a + x`` (calibration-in-the-large). ``init`` warm-starts
    bootstrap replicates from the point estimate, so they converge in a few steps.
    """
    nb = W.shape[0]
    a = np.full(nb, init[0])
    b = np.full(nb, 1.0 if fix_slope else init[1])
    wy, wyx, x2 = W @ y, W @ (y * x), x * x
    # Two (b, n) work buffers reused across iterations: the same operations as the textbook expressions
    # (μ = 1/(1 + exp(−(a + b·x))), s = wμ·(1 − μ)), in place, so the results are bit-identical.
    mu, wmu = np.empty(W.shape), np.empty(W.shape)
    for _ in range(iters):
        np.multiply(b[:, None], x, out=mu)
        mu += a[:, None]
        np.negative(mu, out=mu)
        np.exp(mu, out=mu)
        mu += 1.0
        np.divide(1.0, mu, out=mu)
        np.multiply(W, mu, out=wmu)
        g0 = wy - wmu.sum(axis=1)
        s = np.subtract(1.0, mu, out=mu)  # μ is not needed again this iteration
        s *= wmu
        h00 = s.sum(axis=1)
        if fix_slope:
            da = np.clip(np.nan_to_num(_div(g0, h00)), -5, 5)
            a = a + da
            if np.max(np.abs(da)) < 1e-9:
                break
            continue
        g1 = wyx - wmu @ x
        h01, h11 = s @ x, s @ x2
        det = h00 * h11 - h01 * h01
        # Damped steps keep near-separable bootstrap replicates from overshooting.
        da = np.clip(np.nan_to_num(_div(h11 * g0 - h01 * g1, det)), -5, 5)
        db = np.clip(np.nan_to_num(_div(h00 * g1 - h01 * g0, det)), -5, 5)
        a, b = a + da, b + db
        if max(np.max(np.abs(da)), np.max(np.abs(db))) < 1e-9:
            break
    return a, b


def logit(p: Any) -> FloatArray:
    """log(p / (1 − p)) with p clipped away from 0 and 1 (1e-6) so fits stay finite."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.asarray(np.log(q / (1 - q)), dtype=np.float64)


# -------------------------------------------------------------------------------------------- the panel


# Every metric metric_panel can give (``_slope_intercept`` is the slope fit's intercept, kept for warm starts).
PANEL_METRICS = (
    "prevalence", "mean_predicted", "auc", "ap", "ap_lift", "brier", "scaled_brier", "log_loss", "oe",
    "cal_intercept", "_slope_intercept", "cal_slope", "net_benefit", "sensitivity", "specificity", "ppv", "npv",
    "alert_rate", "expected_auc", "oracle_brier", "excess_brier",
)  # fmt: skip


def metric_panel(
    y: Any,
    p: Any,
    W: Any = None,
    *,
    tau: float,
    p_t: float,
    p_oracle: Any = None,
    ranked: _Ranked | None = None,
    init: dict[str, float] | None = None,
    only: Sequence[str] | None = None,
    integer_weights: bool = False,
) -> dict[str, FloatArray]:
    """All row-level metrics of §4.3 for each weight row of ``W`` (shape (b, n); None = unweighted).

    ``tau`` is the operating threshold (Se, Sp, PPV, NPV, alert rate); ``p_t`` the net-benefit threshold
    probability. With ``p_oracle`` (p^A) it adds expected AUC vs p^A, oracle Brier E[p^A(1 − p^A)] and
    excess Brier mean (p̂ − p^A)². ``only`` limits the panel to those metrics (each is computed exactly as
    in the full panel: a bootstrap that reports a few metrics skips the cost of the rest, e.g. the
    calibration-in-the-large fit). ``integer_weights``: every weight is a whole number (bootstrap counts;
    None is all ones), which lets AUC and AP share their grouping pass exactly.
    """
    yy, pp = _check(y, p)
    if only is not None and (unknown := sorted(set(only) - set(PANEL_METRICS))):
        raise DataError(f"metric panel: unknown metrics {unknown}")
    want = set(PANEL_METRICS if only is None else only)
    if "cal_slope" in want:
        want.add("_slope_intercept")
    Wm = _weights(W, yy.size)
    rk = ranked if ranked is not None else _Ranked.of(pp)
    sw = Wm.sum(axis=1)
    out: dict[str, FloatArray] = {}
    pos = Wm @ yy
    prev = _div(pos, sw)
    out["prevalence"] = prev
    exp_sum = Wm @ pp
    out["mean_predicted"] = _div(exp_sum, sw)
    if want & {"auc"} and want & {"ap", "ap_lift"} and integer_weights and _is_binary(yy):
        out["auc"], out["ap"] = _auc_and_ap_counts(rk, yy, Wm)
    else:
        if "auc" in want:
            out["auc"] = _pairwise_auc(rk, yy, 1.0 - yy, Wm)
        if want & {"ap", "ap_lift"}:
            out["ap"] = _ap_sorted(rk, yy, Wm)
    if "ap" in out:
        out["ap_lift"] = _div(out["ap"], prev)
    if want & {"brier", "scaled_brier"}:
        brier = _div(Wm @ ((pp - yy) ** 2), sw)
        out["brier"] = brier
        out["scaled_brier"] = 1.0 - _div(brier, prev * (1.0 - prev))
    if "log_loss" in want:
        pc = np.clip(pp, _EPS, 1 - _EPS)
        ll = -(yy * np.log(pc) + (1 - yy) * np.log1p(-pc))
        out["log_loss"] = _div(Wm @ ll, sw)
    out["oe"] = _div(pos, exp_sum)
    x = logit(pp) if want & {"cal_intercept", "cal_slope"} else pp
    ini = init or {}
    if "cal_intercept" in want:
        out["cal_intercept"], _ = _logistic_fit(
            x, yy, Wm, fix_slope=True, init=(ini.get("cal_intercept", 0.0), 1.0)
        )
    if "cal_slope" in want:
        a0, b0 = ini.get("_slope_intercept", 0.0), ini.get("cal_slope", 1.0)
        out["_slope_intercept"], out["cal_slope"] = _logistic_fit(x, yy, Wm, fix_slope=False, init=(a0, b0))
    if "net_benefit" in want:
        nb_alert = (pp >= p_t).astype(np.float64)
        tp_t = Wm @ (yy * nb_alert)
        fp_t = Wm @ ((1 - yy) * nb_alert)
        out["net_benefit"] = _div(tp_t - fp_t * p_t / (1 - p_t), sw)
    if want & {"sensitivity", "specificity", "ppv", "npv", "alert_rate"}:
        alert = (pp >= tau).astype(np.float64)
        tp = Wm @ (yy * alert)
        fp = Wm @ ((1 - yy) * alert)
        fn = pos - tp
        tn = sw - pos - fp
        out["sensitivity"] = _div(tp, tp + fn)
        out["specificity"] = _div(tn, tn + fp)
        out["ppv"] = _div(tp, tp + fp)
        out["npv"] = _div(tn, tn + fn)
        out["alert_rate"] = _div(tp + fp, sw)
    if p_oracle is not None and want & {"expected_auc", "oracle_brier", "excess_brier"}:
        po = _vec(p_oracle, "p_oracle")
        if po.shape != pp.shape:
            raise DataError("p_oracle: length mismatch with predictions")
        out["expected_auc"] = _pairwise_auc(rk, po, 1.0 - po, Wm)
        out["oracle_brier"] = _div(Wm @ (po * (1 - po)), sw)
        out["excess_brier"] = _div(Wm @ ((pp - po) ** 2), sw)
    # Cheap by-products of a shared pass stay out when not asked for, so a panel has the keys it was asked.
    return {k: v for k, v in out.items() if only is None or k in want}


def _scalar(a: FloatArray) -> float:
    return float(a[0])


# ------------------------------------------------------------------------------------ single-value API


def average_precision(y: Any, p: Any, sample_weight: Any = None) -> float:
    """Average precision (area under the step PR curve), as ``sklearn.metrics.average_precision_score``."""
    yy, pp = _check(y, p)
    return _scalar(_ap_sorted(_Ranked.of(pp), yy, _weights(sample_weight, yy.size)))


def roc_auc(y: Any, p: Any, sample_weight: Any = None) -> float:
    """ROC-AUC with ties counted ½ (Mann–Whitney); NaN if one class is absent."""
    yy, pp = _check(y, p)
    return _scalar(_pairwise_auc(_Ranked.of(pp), yy, 1.0 - yy, _weights(sample_weight, yy.size)))


def expected_auc(score: Any, p: Any, sample_weight: Any = None) -> float:
    """Expected AUC of ``score`` against Y ~ Bernoulli(p) (docs/science.md §1.9/§8), O(n log n), ties ½."""
    pp = _vec(p, "p")
    s = _vec(score, "score")
    if s.shape != pp.shape:
        raise DataError("score/p: length mismatch")
    return _scalar(_pairwise_auc(_Ranked.of(s), pp, 1.0 - pp, _weights(sample_weight, pp.size)))


def brier(y: Any, p: Any) -> float:
    """Mean squared error of the risk."""
    yy, pp = _check(y, p)
    return float(np.mean((pp - yy) ** 2))


def scaled_brier(y: Any, p: Any) -> float:
    """1 − Brier / (π(1 − π)): 0 for the prevalence-only model, 1 for perfect."""
    yy, pp = _check(y, p)
    prev = yy.mean()
    return float(1 - brier(yy, pp) / (prev * (1 - prev))) if 0 < prev < 1 else float("nan")


def log_loss(y: Any, p: Any) -> float:
    """Mean negative log-likelihood (p clipped to [eps, 1 − eps] as scikit-learn does)."""
    yy, pp = _check(y, p)
    pc = np.clip(pp, _EPS, 1 - _EPS)
    return float(-np.mean(yy * np.log(pc) + (1 - yy) * np.log1p(-pc)))


def calibration_in_the_large(y: Any, p: Any) -> dict[str, float]:
    """O/E ratio Σy/Σp̂ and the intercept a of ``logit P(Y) = a + logit p̂`` (slope fixed at 1)."""
    yy, pp = _check(y, p)
    a, _ = _logistic_fit(logit(pp), yy, np.ones((1, yy.size)), fix_slope=True)
    return {"oe": float(yy.sum() / pp.sum()) if pp.sum() > 0 else float("nan"), "intercept": float(a[0])}


def calibration_slope(y: Any, p: Any) -> dict[str, float]:
    """Intercept a and slope b of the logistic recalibration ``logit P(Y) = a + b·logit p̂``."""
    yy, pp = _check(y, p)
    a, b = _logistic_fit(logit(pp), yy, np.ones((1, yy.size)), fix_slope=False)
    return {"intercept": float(a[0]), "slope": float(b[0])}


def smoothed_observed(y: Any, p: Any) -> FloatArray:
    """Flexible calibration curve: isotonic (monotone) regression of y on p̂, evaluated at each p̂.

    Isotonic instead of Austin–Steyerberg's loess: no bandwidth to choose, deterministic, O(n log n),
    and a calibrated risk model should be monotone in p̂ (docs/science.md §4.3 allows either).
    """
    from sklearn.isotonic import IsotonicRegression

    yy, pp = _check(y, p)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    return np.asarray(iso.fit_transform(pp, yy), dtype=np.float64)


def ici(y: Any, p: Any) -> dict[str, float]:
    """Integrated calibration index: mean |p̂ − smoothed observed| (plus E50 and E90), isotonic smoother."""
    yy, pp = _check(y, p)
    d = np.abs(pp - smoothed_observed(yy, pp))
    return {"ici": float(d.mean()), "e50": float(np.median(d)), "e90": float(np.quantile(d, 0.9))}


def calibration_curve(y: Any, p: Any, n_bins: int = 10) -> dict[str, list[float]]:
    """Quantile-bin calibration points (mean p̂ vs observed rate per bin) for plots and reports."""
    yy, pp = _check(y, p)
    edges = np.unique(np.quantile(pp, np.linspace(0, 1, n_bins + 1)))
    idx = np.clip(np.searchsorted(edges, pp, side="right") - 1, 0, max(len(edges) - 2, 0))
    cnt = np.bincount(idx, minlength=len(edges) - 1 if len(edges) > 1 else 1).astype(np.float64)
    mp = np.bincount(idx, weights=pp, minlength=cnt.size)
    ob = np.bincount(idx, weights=yy, minlength=cnt.size)
    keep = cnt > 0
    return {
        "mean_predicted": (mp[keep] / cnt[keep]).tolist(),
        "observed": (ob[keep] / cnt[keep]).tolist(),
        "count": cnt[keep].tolist(),
    }


def net_benefit(y: Any, p: Any, p_t: float) -> float:
    """Decision-curve net benefit ``(TP − FP·p_t/(1 − p_t)) / n`` with alerts at p̂ ≥ p_t."""
    yy, pp = _check(y, p)
    if not 0 < p_t < 1:
        raise DataError(f"p_t: threshold probability must be in (0, 1), got {p_t}")
    alert = pp >= p_t
    tp = float(np.sum(yy * alert))
    fp = float(np.sum((1 - yy) * alert))
    return (tp - fp * p_t / (1 - p_t)) / yy.size


def net_benefit_curve(
    y: Any, p: Any, thresholds: Sequence[float] | None = None, *, lo: float = 0.02, hi: float = 0.30
) -> dict[str, list[float]]:
    """NB of the model, treat-all and treat-none over a grid of threshold probabilities (default 0.02–0.30)."""
    yy, pp = _check(y, p)
    grid = np.asarray(thresholds if thresholds is not None else np.round(np.arange(lo, hi + 1e-9, 0.01), 4))
    if np.any((grid <= 0) | (grid >= 1)):
        raise DataError("net_benefit_curve: thresholds must be in (0, 1)")
    o = np.argsort(pp, kind="mergesort")
    ps, ys = pp[o], yy[o]
    # Rows with p >= t are the suffix starting at searchsorted(left); suffix sums give TP and alerts.
    suf_y = np.r_[np.cumsum(ys[::-1])[::-1], 0.0]
    first = np.searchsorted(ps, grid, side="left")
    tp = suf_y[first]
    alerts = (yy.size - first).astype(np.float64)
    fp = alerts - tp
    odds = grid / (1 - grid)
    n = yy.size
    prev = yy.mean()
    return {
        "threshold": grid.tolist(),
        "model": ((tp - fp * odds) / n).tolist(),
        "treat_all": (prev - (1 - prev) * odds).tolist(),
        "treat_none": [0.0] * grid.size,
        "alert_rate": (alerts / n).tolist(),
    }


def operating_point(y: Any, p: Any, tau: float) -> dict[str, float]:
    """Confusion counts and Se, Sp, PPV, NPV, alert rate, NNS = 1/PPV at threshold τ (alert = p̂ ≥ τ)."""
    yy, pp = _check(y, p)
    alert = pp >= tau
    tp = float(np.sum(yy * alert))
    fp = float(np.sum((1 - yy) * alert))
    fn = float(np.sum(yy * ~alert))
    tn = float(yy.size - tp - fp - fn)

    def r(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    ppv = r(tp, tp + fp)
    return {
        "tau": float(tau),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "sensitivity": r(tp, tp + fn),
        "specificity": r(tn, tn + fp),
        "ppv": ppv,
        "npv": r(tn, tn + fn),
        "alert_rate": r(tp + fp, float(yy.size)),
        "nns": 1.0 / ppv if ppv > 0 else float("nan"),
    }


def oracle_summary(y_true: Any, p: Any, p_oracle: Any) -> dict[str, float]:
    """Label-draw-free ceiling numbers (§1.9): expected AUC of the oracle and of the model vs p^A, oracle
    Brier E[p^A(1 − p^A)], excess Brier mean (p̂ − p^A)², and the oracle's realised true-label AUC/AP.

    Gaps are like for like: ``auc_gap_expected`` = expected AUC oracle − model (both vs p^A, no label
    draw), ``auc_gap_realised`` = realised true-label AUC oracle − model (both on the same drawn labels);
    a realised AUC minus an expected one mixes the two and is not reported."""
    yy, pp = _check(y_true, p)
    po = _vec(p_oracle, "p_oracle")
    if po.shape != pp.shape:
        raise DataError("p_oracle: length mismatch with predictions")
    e_oracle, e_model = expected_auc(po, po), expected_auc(pp, po)
    r_oracle, r_model = roc_auc(yy, po), roc_auc(yy, pp)
    return {
        "expected_auc_oracle": e_oracle,
        "expected_auc_model": e_model,
        "auc_gap_expected": e_oracle - e_model,
        "model_auc_true": r_model,
        "auc_gap_realised": r_oracle - r_model,
        "ap_gap_realised": average_precision(yy, po) - average_precision(yy, pp),
        "oracle_brier": float(np.mean(po * (1 - po))),
        "excess_brier": float(np.mean((pp - po) ** 2)),
        "model_brier_decomposed": float(np.mean((pp - po) ** 2) + np.mean(po * (1 - po))),
        "oracle_auc_true": r_oracle,
        "oracle_ap_true": average_precision(yy, po),
        "oracle_brier_true": brier(yy, np.clip(po, 0, 1)),
    }


def roc_points(y: Any, p: Any, max_points: int = 200) -> dict[str, list[float]]:
    """ROC curve (fpr, tpr, thresholds) at distinct thresholds, downsampled to ≤ ``max_points`` points
    (always keeping both ends) — the data KFP's ClassificationMetrics.log_roc_curve takes."""
    yy, pp = _check(y, p)
    rk = _Ranked.of(pp)
    ys = yy[rk.order]
    tp = np.add.reduceat(ys, rk.starts).cumsum()
    alerts = np.add.reduceat(np.ones_like(ys), rk.starts).cumsum()
    fp = alerts - tp
    P, N = tp[-1], fp[-1]
    tpr = np.r_[0.0, tp / P if P > 0 else np.zeros_like(tp)]
    fpr = np.r_[0.0, fp / N if N > 0 else np.zeros_like(fp)]
    thr = np.r_[1.0, pp[rk.order][rk.starts]]  # KFP rejects inf; 1.0 alerts nobody above max p
    if tpr.size > max_points:
        keep = np.unique(np.round(np.linspace(0, tpr.size - 1, max_points)).astype(np.int64))
        tpr, fpr, thr = tpr[keep], fpr[keep], thr[keep]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}


def pr_points(y: Any, p: Any, max_points: int = 200) -> dict[str, list[float]]:
    """Precision–recall curve points at distinct thresholds, downsampled to ≤ ``max_points``."""
    yy, pp = _check(y, p)
    rk = _Ranked.of(pp)
    ys = yy[rk.order]
    tp = np.add.reduceat(ys, rk.starts).cumsum()
    alerts = np.add.reduceat(np.ones_like(ys), rk.starts).cumsum()
    P = tp[-1]
    recall = tp / P if P > 0 else np.zeros_like(tp)
    precision = tp / alerts
    if recall.size > max_points:
        keep = np.unique(np.round(np.linspace(0, recall.size - 1, max_points)).astype(np.int64))
        recall, precision = recall[keep], precision[keep]
    return {"recall": recall.tolist(), "precision": precision.tolist()}


def confusion_matrix_at(y: Any, p: Any, tau: float) -> dict[str, Any]:
    """Confusion matrix at τ in KFP's ClassificationMetrics layout: rows = actual, cols = predicted."""
    op = operating_point(y, p, tau)
    return {
        "categories": ["no_diabetes", "diabetes"],
        "matrix": [[int(op["tn"]), int(op["fp"])], [int(op["fn"]), int(op["tp"])]],
    }


# --------------------------------------------------------------------------------------- bootstrapping


def patient_codes(groups: Any) -> tuple[IntArray, int]:
    """Dense 0..P−1 codes of the cluster (patient) ids and the number of clusters."""
    g = np.asarray(groups)
    if g.ndim != 1 or g.size == 0:
        raise DataError("groups: expected a non-empty 1-D array of patient ids")
    uniq, codes = np.unique(g, return_inverse=True)
    return codes.astype(np.int64), int(uniq.size)


def cluster_counts(n_clusters: int, n_boot: int, seed: int) -> IntArray:
    """(B, P) matrix: how often each patient is drawn in each of B resamples of P patients with replacement
    (unsigned, in the smallest type that holds the largest count)."""
    if n_boot < 1:
        raise DataError(f"bootstrap_replicates: must be >= 1, got {n_boot}")
    (counts,) = cluster_count_chunks(n_clusters, seed, 0, n_boot, n_boot)
    return counts


def cluster_count_chunks(n_clusters: int, seed: int, start: int, stop: int, size: int) -> Iterator[IntArray]:
    """Rows ``[start, stop)`` of :func:`cluster_counts`' matrix (any B ≥ ``stop``), ``size`` rows at a time
    (the last chunk may be shorter): the same draw, never held whole, so a bootstrap that consumes it chunk
    by chunk holds ``size`` × patients bytes whatever B is. The rows before ``start`` are drawn and dropped:
    a multinomial row uses a varying amount of the random stream, so the stream cannot jump ahead."""
    if not 0 <= start < stop or size < 1:
        raise DataError(f"bootstrap replicates: bad range [{start}, {stop}) in chunks of {size}")
    rng = np.random.default_rng(seed)
    pvals = np.full(n_clusters, 1.0 / n_clusters)
    # Drawn a few replicates at a time (the same stream as one size=B call: numpy draws multinomial rows one
    # after another) and kept in the smallest unsigned type that holds them (a patient is rarely drawn
    # more than ~10 times: uint8); the int64 draw is bounded by _CHUNK_CELLS.
    step = max(1, _CHUNK_CELLS // max(n_clusters, 1))
    pos = 0
    while pos < start:  # skipped replicates: drawn in the same pieces, never kept
        k = min(step, start - pos)
        rng.multinomial(n_clusters, pvals, size=k)
        pos += k
    for lo in range(start, stop, size):
        hi = min(lo + size, stop)
        pieces: list[IntArray] = []
        for s in range(lo, hi, step):
            part = rng.multinomial(n_clusters, pvals, size=min(step, hi - s))
            pieces.append(_compact(part))
            del part  # not alive beside the next draw
        # concatenate promotes to the largest piece's type: the smallest type of the chunk's maximum
        chunk = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        del pieces  # the generator's frame would keep them beside the chunk while the consumer runs
        yield chunk
        del chunk


def _compact(counts: IntArray) -> IntArray:
    """A copy of ``counts`` in the smallest unsigned type that holds its largest value."""
    return counts.astype(np.min_scalar_type(int(counts.max())), copy=True)


def count_sums(counts: IntArray, members: Sequence[npt.NDArray[np.bool_]]) -> FloatArray:
    """Per replicate (row of ``counts``) and member set, how many drawn patients are members: shape
    (replicates, sets). Whole numbers summed as integers, so exact, and the same for any chunking."""
    out = np.empty((counts.shape[0], len(members)))
    for j, member in enumerate(members):
        out[:, j] = counts[:, member].sum(axis=1, dtype=np.int64)
    return out


def _chunks(counts: IntArray, codes: IntArray, row_arrays: int = 0) -> Iterator[FloatArray]:
    """Row-weight chunks W[b, i] = counts[b, patient(i)], sized to bound memory: the chunk's cells and
    ``row_arrays`` arrays of one value a row (what the caller reads and holds beside it) share
    :data:`_CHUNK_CELLS`, so a bootstrap's working set does not grow with its rows (down to one replicate
    a chunk: at 20M raw rows the full panel's 4-replicate chunks had made it grow 2M → 20M by ~70 MB)."""
    step = max(1, (_CHUNK_CELLS - row_arrays * codes.size) // max(codes.size, 1))
    for s in range(0, counts.shape[0], step):
        yield counts[s : s + step][:, codes].astype(np.float64)


def _summarise(point: float, reps: FloatArray, alpha: float) -> dict[str, float]:
    ok = reps[np.isfinite(reps)]
    if ok.size == 0:
        return {"value": point, "lo": float("nan"), "hi": float("nan"), "se": float("nan")}
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return {
        "value": point,
        "lo": float(lo),
        "hi": float(hi),
        "se": float(ok.std(ddof=1)) if ok.size > 1 else 0.0,
    }


def bootstrap_panel(
    y: Any,
    p: Any,
    groups: Any,
    *,
    tau: float,
    p_t: float,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    p_oracle: Any = None,
    counts: IntArray | None = None,
    codes: IntArray | None = None,
    only: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Point estimate + patient-cluster bootstrap percentile CI for every :func:`metric_panel` metric.

    Patients are resampled with all their rows (row weight = times the patient was drawn). Pass
    ``counts``/``codes`` (from :func:`cluster_counts`/:func:`patient_codes` over a larger population) to
    bootstrap a subset of rows with the population's resamples — slices then share replicates.
    """
    point, reps = bootstrap_replicates(
        y,
        p,
        groups,
        tau=tau,
        p_t=p_t,
        n_boot=n_boot,
        seed=seed,
        p_oracle=p_oracle,
        counts=counts,
        codes=codes,
        only=only,
    )
    return {k: _summarise(point[k], reps[k], alpha) for k in point}


def bootstrap_replicates(
    y: Any,
    p: Any,
    groups: Any,
    *,
    tau: float,
    p_t: float,
    n_boot: int = 200,
    seed: int = 0,
    p_oracle: Any = None,
    counts: IntArray | None = None,
    codes: IntArray | None = None,
    only: Sequence[str] | None = None,
) -> tuple[dict[str, float], dict[str, FloatArray]]:
    """Point estimates and the per-replicate values behind :func:`bootstrap_panel` (same arguments).

    With shared ``counts``/``codes`` replicate b of a slice and of the whole population resample the same
    patients, so their difference per replicate gives a paired CI for slice − overall. ``only``: as in
    :func:`metric_panel`.
    """
    yy, pp = _check(y, p)
    if codes is None:
        codes, n_clusters = patient_codes(groups)
    else:
        n_clusters = int(codes.max()) + 1
    if codes.size != yy.size:
        raise DataError("groups: length mismatch with labels")
    if counts is None:
        counts = cluster_counts(n_clusters, n_boot, seed)
    rows = BootstrapRows.of(yy, pp, codes, p_oracle)
    point = bootstrap_point(rows, tau=tau, p_t=p_t, only=only)
    reps = bootstrap_chunk(rows, counts, point, tau=tau, p_t=p_t, only=only)
    return {k: point[k] for k in reps}, reps


@dataclass(frozen=True)
class BootstrapRows:
    """A bootstrap's rows sorted by descending score (every replicate then skips the (b, n) reordering):
    labels, scores, patient codes, the oracle risk (or None) and the ranking."""

    y: FloatArray
    p: FloatArray
    codes: IntArray
    p_oracle: FloatArray | None
    ranked: _Ranked
    copies: int = 0  # row arrays copied to sort them (0: the caller's arrays, already sorted)

    @property
    def row_arrays(self) -> int:
        """Arrays of one value a row the bootstrap reads (labels, scores, codes, oracle risk) and holds
        (its copies): they share the chunks' memory budget (:func:`_chunks`)."""
        return 3 + (self.p_oracle is not None) + self.copies

    @classmethod
    def of(cls, y: Any, p: Any, codes: IntArray, p_oracle: Any = None, *, copies: int = 0) -> BootstrapRows:
        """Sorted copies, or the arrays themselves when they come sorted (:func:`descending_order`).
        ``copies``: row arrays the caller made for this bootstrap (a slice's rows), counted like sorted
        copies (:func:`bootstrap_chunk`)."""
        yy, pp = _check(y, p)
        po = None if p_oracle is None else _vec(p_oracle, "p_oracle")
        rk = _Ranked.of(pp)
        if rk.identity:
            return cls(yy, pp, codes, po, rk, copies)
        o = rk.order
        yy, pp, codes = yy[o], pp[o], codes[o]
        po = None if po is None else po[o]
        return cls(yy, pp, codes, po, _Ranked.of(pp), 3 if po is None else 4)


def bootstrap_point(
    rows: BootstrapRows, *, tau: float, p_t: float, only: Sequence[str] | None = None
) -> dict[str, float]:
    """The panel's point estimates on ``rows``, with the internal ``_``-keys the replicates warm-start
    from (pass the result to :func:`bootstrap_chunk`)."""
    point = metric_panel(
        rows.y,
        rows.p,
        None,
        tau=tau,
        p_t=p_t,
        p_oracle=rows.p_oracle,
        ranked=rows.ranked,
        only=only,
        integer_weights=True,
    )
    return {k: _scalar(v) for k, v in point.items()}


def bootstrap_chunk(
    rows: BootstrapRows,
    counts: IntArray,
    point: dict[str, float],
    *,
    tau: float,
    p_t: float,
    only: Sequence[str] | None = None,
) -> dict[str, FloatArray]:
    """The panel for each resample (row) of ``counts`` (replicates × patients, patients as ``rows.codes``
    numbers them), warm-started from ``point``; a few replicates at a time, to bound memory. The rows it
    reads and its copies of them take their share of that bound (:attr:`BootstrapRows.row_arrays`): at 20M
    raw rows the full panel's chunks, then the oracle's own panel (sorted by the oracle risk: copies) and
    the large slices (their rows: copies) had each made a process's peak grow with the rows."""
    reps: dict[str, list[FloatArray]] = {k: [] for k in point if k[0] != "_"}
    for W in _chunks(counts, rows.codes, rows.row_arrays):
        chunk = metric_panel(
            rows.y,
            rows.p,
            W,
            tau=tau,
            p_t=p_t,
            p_oracle=rows.p_oracle,
            ranked=rows.ranked,
            init=point,
            only=only,
            integer_weights=True,
        )
        for k, got in reps.items():
            got.append(chunk[k])
    return {k: np.concatenate(v) for k, v in reps.items()}


def percentile_ci(point: float, reps: Any, alpha: float) -> dict[str, float]:
    """``{value, lo, hi, se}`` of a point estimate and its bootstrap replicates (NaN replicates skipped)."""
    return _summarise(point, np.asarray(reps, dtype=np.float64), alpha)


def paired_bootstrap_diff(
    y: Any,
    score_a: Any,
    score_b: Any,
    groups: Any,
    *,
    tau: float,
    p_t: float,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    p_oracle: Any = None,
) -> dict[str, dict[str, float]]:
    """Paired patient-cluster bootstrap of ``metric(score_b) − metric(score_a)`` (§1.9 protocol step 3).

    Both score vectors are evaluated on the *same* resamples, so shared patient noise cancels. Returns,
    per metric: ``diff`` (point), ``lo``/``hi`` (percentile CI), ``se`` and ``p_value`` (two-sided, from
    the share of replicates on each side of 0).
    """
    yy, pa = _check(y, score_a, p_name="score_a")
    _, pb = _check(y, score_b, p_name="score_b")
    codes, n_clusters = patient_codes(groups)
    if codes.size != yy.size:
        raise DataError("groups: length mismatch with labels")
    counts = cluster_counts(n_clusters, n_boot, seed)
    # Rows sorted by score_a once; score_b's order then costs one gather per chunk.
    o = _Ranked.of(pa).order
    yy, pa, pb, codes = yy[o], pa[o], pb[o], codes[o]
    po = None if p_oracle is None else _vec(p_oracle, "p_oracle")[o]
    ra, rb = _Ranked.of(pa), _Ranked.of(pb)
    pt_a = metric_panel(yy, pa, None, tau=tau, p_t=p_t, p_oracle=po, ranked=ra)
    pt_b = metric_panel(yy, pb, None, tau=tau, p_t=p_t, p_oracle=po, ranked=rb)
    ini_a = {k: _scalar(v) for k, v in pt_a.items()}
    ini_b = {k: _scalar(v) for k, v in pt_b.items()}
    reps: dict[str, list[FloatArray]] = {k: [] for k in pt_a if k[0] != "_"}
    for W in _chunks(counts, codes):
        ca = metric_panel(yy, pa, W, tau=tau, p_t=p_t, p_oracle=po, ranked=ra, init=ini_a)
        cb = metric_panel(yy, pb, W, tau=tau, p_t=p_t, p_oracle=po, ranked=rb, init=ini_b)
        for k in reps:
            reps[k].append(cb[k] - ca[k])
    out: dict[str, dict[str, float]] = {}
    for k, chunks in reps.items():
        d = np.concatenate(chunks)
        s = _summarise(_scalar(pt_b[k]) - _scalar(pt_a[k]), d, alpha)
        ok = d[np.isfinite(d)]
        side = min(float(np.mean(ok <= 0)), float(np.mean(ok >= 0))) if ok.size else float("nan")
        pv = min(1.0, 2.0 * side) if ok.size else float("nan")
        out[k] = {"diff": s["value"], "lo": s["lo"], "hi": s["hi"], "se": s["se"], "p_value": pv}
    return out


# ----------------------------------------------------------------------------------------- patient level


def patient_level_metrics(
    patient_id: Any,
    year: Any,
    p: Any,
    onset_year: Any,
    recorded_year: Any,
    *,
    tau: float,
    ks: Sequence[int] = (1, 2, 3),
    onset_window: int | None = None,
    label_true: Any = None,
    n_boot: int = 0,
    seed: int = 0,
    alpha: float = 0.05,
    counts: IntArray | None = None,
) -> dict[str, Any]:
    """Patient-level detection (docs/science.md §2.4) from row predictions.

    A = first year with p̂ ≥ τ. Case patients are those whose true onset T* lies in
    [first row year, last row year + ``onset_window``] (default max(ks)). docs/science.md says "inside the row
    range"; with a 2-year test window that makes every k identical, so onsets up to max(k) years after
    the last row count too and Sensitivity_k then measures earliness. T* before the first row
    (undiagnosed prevalent) is detection, not prediction, and is excluded. Sensitivity_k = share of cases with ``T* − k ≤ A < max(T_rec, T* + 1)``
    (T_rec missing = never coded = +∞). Lead time = T_rec − A for detected cases with a recorded year.
    False-alarm share = share of never-onset patients (T* null) ever alerted; alert burden = alerts (and
    false alerts: rows with Y_true = 0, or with T* null when ``label_true`` is None) per 1,000 patient-years.
    ``onset_year``/``recorded_year`` are per row (constant within patient), NaN for missing.
    With ``n_boot`` > 0, sensitivities and the false-alarm share get patient-bootstrap CIs; ``counts``
    passes the resamples :func:`cluster_counts` would draw (n_boot × patients, patients in sorted-id order)
    when the caller already has them. A caller that streams the resamples uses
    :func:`patient_level_point`, :func:`count_sums` per chunk and :func:`patient_level_cis` instead.
    """
    level = patient_level_point(
        patient_id,
        year,
        p,
        onset_year,
        recorded_year,
        tau=tau,
        ks=ks,
        onset_window=onset_window,
        label_true=label_true,
    )
    if n_boot <= 0:
        return level.result
    P = level.result["n_patients"]
    if counts is None:
        counts = cluster_counts(P, n_boot, seed)
    elif counts.shape != (n_boot, P):
        raise DataError(f"patient_level_metrics: counts has shape {counts.shape}, expected ({n_boot}, {P})")
    return patient_level_cis(level, count_sums(counts, level.members), alpha)


@dataclass(frozen=True)
class PatientLevel:
    """:func:`patient_level_metrics` without its CIs (``result``: each share as ``{"value": v}``), and what
    the CIs need: per share, the patient sets (``members``, by index) of its numerator and denominator, whose
    resampled sizes (:func:`count_sums`) give the share per replicate."""

    result: dict[str, Any]
    members: tuple[npt.NDArray[np.bool_], ...]
    shares: dict[str, tuple[int, int]]


def patient_level_point(
    patient_id: Any,
    year: Any,
    p: Any,
    onset_year: Any,
    recorded_year: Any,
    *,
    tau: float,
    ks: Sequence[int] = (1, 2, 3),
    onset_window: int | None = None,
    label_true: Any = None,
) -> PatientLevel:
    """:func:`patient_level_metrics`' values (same arguments), with the sets its bootstrap resamples."""
    pid = np.asarray(patient_id)
    yr = _vec(year, "year")
    pp = _vec(p, "p")
    t_star = np.asarray(onset_year, dtype=np.float64)
    t_rec = np.asarray(recorded_year, dtype=np.float64)
    n = pp.size
    if not (pid.size == yr.size == t_star.size == t_rec.size == n):
        raise DataError("patient_level_metrics: input columns differ in length")
    codes, P = patient_codes(pid)
    alert = pp >= tau
    first_alert = np.full(P, np.inf)
    np.minimum.at(first_alert, codes[alert], yr[alert])
    first_row = np.full(P, np.inf)
    np.minimum.at(first_row, codes, yr)
    last_row = np.full(P, -np.inf)
    np.maximum.at(last_row, codes, yr)
    ts = np.full(P, np.nan)
    tr = np.full(P, np.nan)
    ts[codes] = t_star
    tr[codes] = t_rec
    window = max(ks) if onset_window is None else onset_window
    is_case = np.isfinite(ts) & (ts >= first_row) & (ts <= last_row + window)
    never = ~np.isfinite(ts)
    ever_alert = np.isfinite(first_alert)
    tr_inf = np.where(np.isfinite(tr), tr, np.inf)
    before_coding = first_alert < np.maximum(tr_inf, ts + 1)
    out: dict[str, Any] = {
        "n_patients": P,
        "n_case_patients": int(is_case.sum()),
        "n_never_onset_patients": int(never.sum()),
        "tau": float(tau),
        "onset_window": int(window),
    }
    members: list[npt.NDArray[np.bool_]] = []
    shares: dict[str, tuple[int, int]] = {}

    def share(key: str, ind: npt.NDArray[np.bool_], den: npt.NDArray[np.bool_]) -> None:
        d = float(den.sum())
        out[key] = {"value": float(ind[den].mean()) if d > 0 else float("nan")}
        if not any(m is den for m in members):
            members.append(den)
        members.append(ind & den)
        shares[key] = (len(members) - 1, next(i for i, m in enumerate(members) if m is den))

    with np.errstate(invalid="ignore"):
        for k in ks:
            hit = ever_alert & (first_alert >= ts - k) & before_coding
            share(f"sensitivity_{k}", hit, is_case)
        detected = is_case & ever_alert & before_coding & np.isfinite(tr)
    lead = (tr - first_alert)[detected]
    out["lead_time"] = {
        "n": int(lead.size),
        "median": float(np.median(lead)) if lead.size else float("nan"),
        "q25": float(np.quantile(lead, 0.25)) if lead.size else float("nan"),
        "q75": float(np.quantile(lead, 0.75)) if lead.size else float("nan"),
    }
    share("false_alarm_share", ever_alert, never)
    if label_true is not None:
        false_rows = alert & (np.asarray(label_true, dtype=np.float64) == 0)
    else:
        false_rows = alert & ~np.isfinite(t_star)
    out["alerts_per_1000_patient_years"] = float(1000.0 * alert.sum() / n)
    out["false_alerts_per_1000_patient_years"] = float(1000.0 * false_rows.sum() / n)
    return PatientLevel(out, tuple(members), shares)


def patient_level_cis(level: PatientLevel, sums: FloatArray, alpha: float) -> dict[str, Any]:
    """``level``'s result with a percentile CI on each share; ``sums``: :func:`count_sums` of
    ``level.members`` over all the replicates (replicates × members)."""
    if sums.ndim != 2 or sums.shape[1] != len(level.members):
        raise DataError(
            f"patient-level bootstrap: sums have shape {sums.shape}, expected (B, {len(level.members)})"
        )
    out = dict(level.result)
    with np.errstate(invalid="ignore"):
        for key, (num, den) in level.shares.items():
            out[key] = _summarise(out[key]["value"], _div(sums[:, num], sums[:, den]), alpha)
    return out


# ------------------------------------------------------------------------------ lift / gains at top-k


def top_k_lift_gains(
    df: pl.DataFrame,
    fractions: Sequence[float],
    *,
    score: str,
    label: str,
    group: str,
    entity: str,
    truth: str | None = None,
) -> list[dict[str, Any]]:
    """Lift and gains when a team works the top ``k = max(1, ceil(f * n))`` rows of each ``group`` (period).

    ``df`` is a polars frame with ``entity``, ``group``, ``score``, ``label`` (0/1) and optionally
    ``truth`` (the true risk). Lists are per period; counts are POOLED over periods, per fraction ``f``:
    ``precision`` = positives worked / rows worked, ``lift`` = precision / overall base rate, ``gains`` =
    share of all positives that were worked. With ``truth``: expected positives in the lists, the same for
    the oracle's lists (top-k by ``truth``) and their ratio ``capture_vs_oracle``. Score ties are broken
    by ``entity`` so the lists are deterministic. Empty frame -> ``[]``."""
    if df.height == 0:
        return []

    def ranked(by: str) -> pl.DataFrame:
        return df.sort(group, by, entity, descending=[False, True, False]).with_columns(
            pl.int_range(1, pl.len() + 1).over(group).alias("_rank"),
            pl.len().over(group).alias("_n"),
        )

    has_truth = truth is not None and truth in df.columns
    model = ranked(score)
    oracle = ranked(truth) if has_truth and truth is not None else None
    total_pos = float(df.get_column(label).cast(pl.Float64).sum())
    base = total_pos / df.height
    out: list[dict[str, Any]] = []
    for f in fractions:
        k = pl.max_horizontal((pl.col("_n") * f).ceil().cast(pl.Int64), pl.lit(1))
        top = model.filter(pl.col("_rank") <= k)
        pos = float(top.get_column(label).cast(pl.Float64).sum())
        precision = pos / top.height
        row: dict[str, Any] = {
            "fraction": float(f),
            "rows_worked": top.height,
            "positives": int(pos),
            "precision": precision,
            "lift": precision / base if base > 0 else float("nan"),
            "gains": pos / total_pos if total_pos > 0 else float("nan"),
        }
        if oracle is not None and truth is not None:
            exp_model = float(top.get_column(truth).cast(pl.Float64).sum())
            exp_oracle = float(oracle.filter(pl.col("_rank") <= k).get_column(truth).cast(pl.Float64).sum())
            row |= {
                "expected_positives": exp_model,
                "oracle_expected_positives": exp_oracle,
                "capture_vs_oracle": exp_model / exp_oracle if exp_oracle > 0 else float("nan"),
            }
        out.append(row)
    return out
