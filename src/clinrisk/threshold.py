"""Decision threshold from decision-curve net benefit on calibrated validation risks (docs/science.md §4.2).

``NB(p_t; τ) = TP(τ)/n − FP(τ)/n · p_t/(1 − p_t)`` with alerts at p̂ ≥ τ. For a calibrated model the
NB-optimal τ equals the pre-specified threshold probability p_t, so τ = p_t; the argmax of NB over τ on
validation is checked to lie within ±0.02 of p_t (if not, calibration is off — it is reported, τ is not
moved). An optional alert capacity caps the alert rate; then the capacity threshold is used and the NB lost
is recorded. Youden-J and F-beta optimal thresholds are computed for the report only.

Labels may be soft (E2): a row contributes y to TP and 1 − y to FP. Weights scale each row's count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clinrisk.errors import DataError

if TYPE_CHECKING:
    from clinrisk.config import ThresholdConfig

FloatArray = npt.NDArray[np.float64]
ARGMAX_TOLERANCE = 0.02
CURVE_RANGE = (0.02, 0.30)


@dataclass(frozen=True)
class _Counts:
    """Rows sorted by ascending p with suffix sums, so counts at any τ are one searchsorted away."""

    p: FloatArray
    tp_suffix: FloatArray  # Σ w·y over rows i..end (length n + 1, last = 0)
    fp_suffix: FloatArray
    n: float
    pos: float

    @classmethod
    def of(cls, p: Any, y: Any, w: Any = None) -> _Counts:
        pp = np.asarray(p, dtype=np.float64).ravel()
        yy = np.asarray(y, dtype=np.float64).ravel()
        ww = np.ones_like(pp) if w is None else np.asarray(w, dtype=np.float64).ravel()
        if not (pp.size == yy.size == ww.size):
            raise DataError(f"threshold: length mismatch (p {pp.size}, y {yy.size}, w {ww.size})")
        if pp.size == 0:
            raise DataError("threshold: no validation rows")
        if np.any((pp < 0) | (pp > 1)) or not np.all(np.isfinite(pp)):
            raise DataError("threshold: probabilities must lie in [0, 1]")
        if np.any((yy < 0) | (yy > 1)) or not np.all(np.isfinite(yy)):
            raise DataError("threshold: labels must lie in [0, 1]")
        if np.any(ww < 0):
            raise DataError("threshold: negative weights")
        o = np.argsort(pp, kind="mergesort")
        ps, tp_w, fp_w = pp[o], (ww * yy)[o], (ww * (1 - yy))[o]
        tp_s = np.r_[np.cumsum(tp_w[::-1])[::-1], 0.0]
        fp_s = np.r_[np.cumsum(fp_w[::-1])[::-1], 0.0]
        return cls(ps, tp_s, fp_s, float(ww.sum()), float(tp_w.sum()))

    def at(self, tau: Any) -> tuple[FloatArray, FloatArray]:
        """(TP, FP) weighted counts with alert = p ≥ τ, for each τ."""
        first = np.searchsorted(self.p, np.asarray(tau, dtype=np.float64), side="left")
        return self.tp_suffix[first], self.fp_suffix[first]


def _odds(p_t: float | FloatArray) -> Any:
    return np.asarray(p_t) / (1 - np.asarray(p_t))


def net_benefit(p: Any, y: Any, p_t: float, tau: float | None = None, w: Any = None) -> float:
    """NB at threshold probability ``p_t`` when alerting at p̂ ≥ ``tau`` (default τ = p_t)."""
    if not 0 < p_t < 1:
        raise DataError(f"threshold.threshold_probability: must be in (0, 1), got {p_t}")
    c = _Counts.of(p, y, w)
    tp, fp = c.at(p_t if tau is None else tau)
    return float((tp - fp * _odds(p_t)) / c.n)


def decision_curve(p: Any, y: Any, grid: Any = None, w: Any = None) -> dict[str, list[float]]:
    """Model, treat-all and alert-rate curves over p_t (τ = p_t); default grid 0.02..0.30 step 0.01."""
    c = _Counts.of(p, y, w)
    g = np.asarray(
        grid if grid is not None else np.round(np.arange(CURVE_RANGE[0], CURVE_RANGE[1] + 1e-9, 0.01), 4)
    )
    tp, fp = c.at(g)
    prev = c.pos / c.n
    return {
        "threshold": [float(v) for v in g],
        "model": [float(v) for v in (tp - fp * _odds(g)) / c.n],
        "treat_all": [float(v) for v in prev - (1 - prev) * _odds(g)],
        "alert_rate": [float(v) for v in (tp + fp) / c.n],
    }


def nb_argmax(p: Any, y: Any, p_t: float, w: Any = None, step: float = 0.001) -> tuple[float, float]:
    """(τ, NB) maximising NB(p_t; τ) over τ on a grid of ``step`` in (0, 1); ties → smallest τ."""
    c = _Counts.of(p, y, w)
    taus = np.round(np.arange(step, 1.0, step), 6)
    tp, fp = c.at(taus)
    nb = (tp - fp * _odds(p_t)) / c.n
    i = int(np.argmax(nb))
    return float(taus[i]), float(nb[i])


def capacity_threshold(p: Any, capacity: float, w: Any = None) -> float:
    """Smallest τ (a predicted value) whose alert rate Σw·1{p ≥ τ}/Σw is ≤ ``capacity``."""
    if not 0 < capacity <= 1:
        raise DataError(f"threshold.alert_capacity: must be in (0, 1], got {capacity}")
    pp = np.asarray(p, dtype=np.float64).ravel()
    c = _Counts.of(pp, np.zeros_like(pp), w)
    uniq = np.unique(c.p)
    _, fp = c.at(uniq)  # all labels 0 ⇒ FP = weighted alert count
    ok = np.flatnonzero(fp / c.n <= capacity + 1e-12)
    if ok.size == 0:  # every candidate alerts too many (massive ties at the top): alert nobody
        return float(np.nextafter(uniq[-1], np.inf))
    return float(uniq[ok[0]])


def _best_over_unique(c: _Counts, score: Any) -> tuple[float, float]:
    uniq = np.unique(c.p)
    tp, fp = c.at(uniq)
    vals = np.asarray(score(tp, fp), dtype=np.float64)
    vals = np.where(np.isfinite(vals), vals, -np.inf)
    i = int(np.argmax(vals))
    return float(uniq[i]), float(vals[i])


def youden_threshold(p: Any, y: Any, w: Any = None) -> dict[str, float]:
    """τ maximising Youden J = Se + Sp − 1 (≈ prevalence for a calibrated model; descriptive only)."""
    c = _Counts.of(p, y, w)
    neg = c.n - c.pos
    if c.pos <= 0 or neg <= 0:
        return {"threshold": float("nan"), "j": float("nan")}
    tau, j = _best_over_unique(c, lambda tp, fp: tp / c.pos - fp / neg)
    return {"threshold": tau, "j": j}


def fbeta_threshold(p: Any, y: Any, beta: float = 1.0, w: Any = None) -> dict[str, float]:
    """τ maximising F_beta (≈ F*/2 for calibrated scores when β = 1; descriptive only)."""
    c = _Counts.of(p, y, w)
    b2 = beta * beta
    if c.pos <= 0:
        return {"threshold": float("nan"), "f": float("nan"), "beta": beta}

    def f(tp: FloatArray, fp: FloatArray) -> FloatArray:
        fn = c.pos - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray((1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp), dtype=np.float64)

    tau, fv = _best_over_unique(c, f)
    return {"threshold": tau, "f": fv, "beta": beta}


def _operating(c: _Counts, tau: float) -> dict[str, float]:
    tp, fp = (float(v) for v in c.at(tau))
    alerts = tp + fp
    return {
        "alert_rate": alerts / c.n,
        "sensitivity": tp / c.pos if c.pos > 0 else float("nan"),
        "ppv": tp / alerts if alerts > 0 else float("nan"),
    }


def select_threshold(p: Any, y: Any, cfg: ThresholdConfig, w: Any = None) -> dict[str, Any]:
    """The threshold.json record: τ, method, a reason written from this run's numbers, NB curve, checks."""
    p_t = float(cfg.threshold_probability)
    c = _Counts.of(p, y, w)
    prev = c.pos / c.n
    tp, fp = c.at(p_t)
    nb_pt = float((tp - fp * _odds(p_t)) / c.n)
    treat_all = float(prev - (1 - prev) * _odds(p_t))
    arg_tau, arg_nb = nb_argmax(p, y, p_t, w)
    within = abs(arg_tau - p_t) <= ARGMAX_TOLERANCE + 1e-9
    op_pt = _operating(c, p_t)

    value, method, nb_lost = p_t, "net_benefit", 0.0
    capacity = cfg.alert_capacity
    capacity_note = ""
    if capacity is not None and op_pt["alert_rate"] > capacity:
        value = capacity_threshold(p, capacity, w)
        method = "alert_capacity"
        nb_value = net_benefit(p, y, p_t, tau=value, w=w)
        nb_lost = nb_pt - nb_value
        capacity_note = (
            f" The alert rate at τ = p_t ({op_pt['alert_rate']:.1%}) exceeds the capacity of {capacity:.1%}, "
            f"so τ is raised to the capacity threshold {value:.4f}, costing {nb_lost:.4f} net benefit "
            f"({nb_pt:.4f} → {nb_value:.4f})."
        )
    elif capacity is not None:
        capacity_note = f" Alert rate {op_pt['alert_rate']:.1%} is within the capacity of {capacity:.1%}."
    op = _operating(c, value)
    nb_value = net_benefit(p, y, p_t, tau=value, w=w)
    calib_note = (
        "consistent with calibration"
        if within
        else "outside the ±0.02 tolerance: calibration is off; fix calibration rather than moving τ"
    )
    reason = (
        f"Decision-curve net benefit at the pre-specified threshold probability p_t = {p_t:g} "
        f"(one false alert is worth {(1 - p_t) / p_t:.1f}× less than one case found). On {c.n:.0f} "
        f"validation rows (prevalence {prev:.3f}) the calibrated model at τ = p_t has NB {nb_pt:.4f} vs "
        f"treat-all {treat_all:.4f} and treat-none 0, alerting {op_pt['alert_rate']:.1%} of rows "
        f"(sensitivity {op_pt['sensitivity']:.2f}, PPV {op_pt['ppv']:.2f}). The NB-maximising τ on validation "
        f"is {arg_tau:.3f} (NB {arg_nb:.4f}), {calib_note}.{capacity_note}"
    )
    lo, hi = cfg.sensitivity_range
    sens_grid = np.round(np.arange(lo, hi + 1e-9, 0.01), 4)
    return {
        "value": float(value),
        "method": method,
        "reason": reason,
        "threshold_probability": p_t,
        "alert_capacity": capacity,
        "n": c.n,
        "prevalence": prev,
        "net_benefit": nb_value,
        "net_benefit_at_p_t": nb_pt,
        "treat_all_net_benefit": treat_all,
        "nb_lost": float(nb_lost),
        "alert_rate": op["alert_rate"],
        "sensitivity": op["sensitivity"],
        "ppv": op["ppv"],
        "argmax_tau": arg_tau,
        "argmax_net_benefit": arg_nb,
        "argmax_within_tolerance": bool(within),
        "argmax_tolerance": ARGMAX_TOLERANCE,
        "curve": decision_curve(p, y, w=w),
        "sensitivity_range": decision_curve(p, y, grid=sens_grid, w=w),
        "descriptive": {
            "youden": youden_threshold(p, y, w),
            "f1": fbeta_threshold(p, y, 1.0, w),
            "f2": fbeta_threshold(p, y, 2.0, w),
            "note": "reported only; not used for decisions (docs/science.md §4.2)",
        },
    }
