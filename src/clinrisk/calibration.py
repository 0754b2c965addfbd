"""Recalibration of the (odds-corrected) model logit on the validation split (docs/science.md §4.2 step 2, §8).

Labels may be soft (E2 expected labels in [0, 1]): the maps minimise the weighted log-loss / squared
error against the label as given, so the recorded-label bias that E2 removed is not reintroduced.
Stored as JSON in the bundle; applied by :meth:`clinrisk.bundle.ModelBundle.predict_proba`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from clinrisk.errors import DataError

FloatArray = npt.NDArray[np.float64]
# Probabilities are kept strictly inside (0, 1) so logits and log-losses stay finite.
PROB_EPS = 1e-7


def sigmoid(z: npt.ArrayLike) -> FloatArray:
    """Numerically stable logistic function."""
    zz = np.asarray(z, dtype=np.float64)
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * zz)), dtype=np.float64)


def logit(p: npt.ArrayLike) -> FloatArray:
    """log(p / (1 − p)) with p clipped to [PROB_EPS, 1 − PROB_EPS]."""
    pp = np.clip(np.asarray(p, dtype=np.float64), PROB_EPS, 1 - PROB_EPS)
    return np.asarray(np.log(pp) - np.log1p(-pp), dtype=np.float64)


Method = Literal["select", "logistic", "beta", "isotonic", "auto", "none"]
METHODS: tuple[str, ...] = ("select", "logistic", "beta", "isotonic", "auto", "none")  # = config's list
# ``select``: the map is chosen on held-out data (docs/science.md §4.2 step 2) among these, simplest first.
SELECT_CANDIDATES: tuple[str, ...] = ("none", "logistic", "beta", "isotonic")
SELECT_AP_TOLERANCE = 0.002  # the project's non-inferiority margin for ranking (issue #16)
SELECT_FOLDS = 2
SELECTION_RULE = (
    "cross-fit on patient-grouped folds of the validation split: each candidate map (none, logistic, "
    "beta, isotonic) is fitted on the other folds and scored on the held-out fold; among the maps whose held-out "
    "AP (the mean over held-out folds of the AP within each fold, where one map scores every row) is at least "
    "AP(none) - {tol}, the one with the lowest held-out Brier is chosen (ties: the simpler map); it is then "
    "refitted on the whole validation split"
)
# docs/science.md §4.2: isotonic only once the validation split holds enough positives to support it.
ISOTONIC_MIN_POSITIVES = 1000


def _arrays(z: Any, y: Any, w: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
    zz = np.asarray(z, dtype=np.float64).ravel()
    yy = np.asarray(y, dtype=np.float64).ravel()
    ww = np.ones_like(zz) if w is None else np.asarray(w, dtype=np.float64).ravel()
    if not (zz.size == yy.size == ww.size):
        raise DataError(
            f"calibration: length mismatch (scores {zz.size}, labels {yy.size}, weights {ww.size})"
        )
    if zz.size == 0:
        raise DataError("calibration: no validation rows to fit on")
    if not np.all(np.isfinite(zz)):
        raise DataError("calibration: non-finite model scores")
    if np.any((yy < 0) | (yy > 1)) or not np.all(np.isfinite(yy)):
        raise DataError("calibration: labels must lie in [0, 1]")
    if np.any(ww < 0):
        raise DataError("calibration: negative sample weights")
    return zz, yy, ww


def fit_logistic(z: Any, y: Any, w: Any = None, max_iter: int = 100) -> tuple[float, float]:
    """(a, b) of ``P(Y=1) = σ(a + b·z)`` by Newton's method on the weighted soft-label log-likelihood."""
    zz, yy, ww = _arrays(z, y, w)
    X = np.column_stack([np.ones_like(zz), zz])
    beta = _newton_logistic(X, yy, ww, np.array([0.0, 1.0]), max_iter)  # start at the identity map
    return float(beta[0]), float(beta[1])


def _newton_logistic(
    X: FloatArray, yy: FloatArray, ww: FloatArray, beta: FloatArray, max_iter: int
) -> FloatArray:
    """Maximise the weighted soft-label log-likelihood of ``σ(X·β)`` by damped Newton steps from ``beta``."""

    def loglik(beta: FloatArray) -> float:
        eta = X @ beta
        # log σ(η) = −log(1 + e^{−η}); logaddexp keeps it finite for large |η|.
        return float(-np.sum(ww * (yy * np.logaddexp(0, -eta) + (1 - yy) * np.logaddexp(0, eta))))

    ll = loglik(beta)
    for _ in range(max_iter):
        p = sigmoid(X @ beta)
        grad = X.T @ (ww * (yy - p))
        hess = (X * (ww * p * (1 - p))[:, None]).T @ X + 1e-9 * np.eye(X.shape[1])
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:  # step halving keeps every iteration an ascent step
            cand = beta + t * step
            ll_c = loglik(cand)
            if ll_c >= ll - 1e-12:
                break
            t /= 2
        if t <= 1e-8:
            break
        converged = abs(ll_c - ll) < 1e-10 * (1 + abs(ll))
        beta, ll = cand, ll_c
        if converged:
            break
    return beta


def beta_features(z: Any) -> tuple[FloatArray, FloatArray]:
    """(ln s, −ln(1 − s)) of s = σ(z), computed from the logit so neither overflows."""
    zz = np.asarray(z, dtype=np.float64)
    return np.asarray(-np.logaddexp(0.0, -zz), dtype=np.float64), np.asarray(
        np.logaddexp(0.0, zz), dtype=np.float64
    )


def fit_beta(z: Any, y: Any, w: Any = None, max_iter: int = 100) -> tuple[float, float, float]:
    """(c, a, b) of beta calibration ``P(Y=1) = σ(c + a·ln s − b·ln(1 − s))``, s = σ(z) (Kull et al. 2017).

    A logistic fit on the two log features; the identity map is (0, 1, 1). As in the paper, a negative
    a or b is set to 0 and the other refitted, so the map is monotone increasing and keeps the ranking.
    """
    zz, yy, ww = _arrays(z, y, w)
    ln_s, ln_1s = beta_features(zz)
    one = np.ones_like(zz)
    beta = _newton_logistic(np.column_stack([one, ln_s, ln_1s]), yy, ww, np.array([0.0, 1.0, 1.0]), max_iter)
    c, a, b = (float(v) for v in beta)
    if a < 0 or b < 0:
        keep_a = a >= b  # drop the coefficient that went negative (the smaller one if both did)
        col = ln_s if keep_a else ln_1s
        c, k = (
            float(v)
            for v in _newton_logistic(np.column_stack([one, col]), yy, ww, np.array([0.0, 1.0]), max_iter)
        )
        a, b = (k, 0.0) if keep_a else (0.0, k)
    if not (a > 0 or b > 0):
        raise DataError("calibration: beta map is flat (the scores carry no ranking signal)")
    return c, a, b


def fit_isotonic(z: Any, y: Any, w: Any = None) -> tuple[list[float], list[float]]:
    """Knots (x on the logit scale, y probability) of a weighted isotonic fit, interpolated linearly."""
    from sklearn.isotonic import IsotonicRegression

    zz, yy, ww = _arrays(z, y, w)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(zz, yy, sample_weight=ww)
    return [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]


def fit_calibration(
    z: Any,
    y: Any,
    w: Any = None,
    method: Method = "auto",
    isotonic_min_positives: int = ISOTONIC_MIN_POSITIVES,
) -> dict[str, Any]:
    """Fit the calibration map of odds-corrected logits ``z`` to (soft) labels ``y`` on validation rows.

    ``auto`` = isotonic when the (weighted, expected) positive count exceeds ``isotonic_min_positives``,
    else logistic recalibration of the logit (Platt on the logit).
    """
    zz, yy, ww = _arrays(z, y, w)
    n_pos = float(np.sum(ww * yy))
    n = float(np.sum(ww))
    chosen = method
    if method == "auto":
        chosen = "isotonic" if n_pos > isotonic_min_positives else "logistic"
    base: dict[str, Any] = {"n": n, "n_pos": n_pos, "requested": method}
    if chosen == "select":
        raise DataError("calibration: 'select' needs patient ids; use select_calibration")
    if chosen == "none":
        return {"method": "none", **base}
    if n_pos <= 0 or n_pos >= n:
        raise DataError("calibration: validation labels have a single class; cannot fit a calibration map")
    if chosen == "logistic":
        a, b = fit_logistic(zz, yy, ww)
        return {"method": "logistic", "a": a, "b": b, **base}
    if chosen == "beta":
        c, a, b = fit_beta(zz, yy, ww)
        return {"method": "beta", "c": c, "a": a, "b": b, "scale": "logit", **base}
    if chosen == "isotonic":
        xs, ys = fit_isotonic(zz, yy, ww)
        return {"method": "isotonic", "x": xs, "y": ys, "scale": "logit", **base}
    raise DataError(f"train.calibration: unknown method {method!r}")


def patient_fold(groups: Any, folds: int, salt: int = 0) -> npt.NDArray[np.int64]:
    """Patient-grouped fold index from a fixed integer hash of the group id (never Python's hash).

    Hashed twice: the split buckets are splitmix64(id) % 100, so a fresh draw keeps folds independent of
    them; a different ``salt`` gives an independent partition (validation parts vs calibration folds).
    """
    from clinrisk.splits import splitmix64_np

    g = np.asarray(groups, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        h = splitmix64_np(splitmix64_np(g) + np.uint64(salt))
    return (h % np.uint64(folds)).astype(np.int64)


# The validation split is cut into an early-stopping part (fold 0) and a calibration part (fold 1) by
# patient_fold(patient_id, 2, salt=VALIDATION_PART_SALT); clinrisk.train cuts it, clinrisk.labels labels it.
VALIDATION_PART_SALT = 1


def patient_fold_expr(folds: int, salt: int = 0, col: str = "patient_id") -> Any:
    """:func:`patient_fold` as a polars expression on the Int64 column ``col`` (same fold per patient)."""
    import polars as pl

    from clinrisk.splits import splitmix64_expr

    g = pl.col(col).cast(pl.Int64).reinterpret(signed=False)
    h = splitmix64_expr(splitmix64_expr(g) + pl.lit(salt, dtype=pl.UInt64))
    return (h % pl.lit(folds, dtype=pl.UInt64)).cast(pl.Int64)


def select_calibration(
    z: Any,
    y: Any,
    w: Any,
    groups: Any,
    *,
    ap_tolerance: float = SELECT_AP_TOLERANCE,
    folds: int = SELECT_FOLDS,
) -> dict[str, Any]:
    """Choose and fit the calibration map by :data:`SELECTION_RULE` (held-out, patient-grouped).

    The returned map carries ``selection``: the rule, the held-out AP/Brier/log loss of every candidate,
    which candidates passed the AP check and the chosen method, so the bundle states how it was chosen.
    """
    from clinrisk import metrics as m

    zz, yy, ww = _arrays(z, y, w)
    gg = np.asarray(groups).ravel()
    if gg.size != zz.size:
        raise DataError(f"calibration: length mismatch (scores {zz.size}, patient ids {gg.size})")
    fold = patient_fold(gg, folds)
    held: dict[str, FloatArray] = {}
    failed: dict[str, str] = {}
    for method in SELECT_CANDIDATES:
        out = np.full(zz.size, np.nan)
        try:
            for k in range(folds):
                te = fold == k
                if not te.any():
                    continue
                if te.all():
                    raise DataError("calibration: all validation patients fell in one fold")
                cal = fit_calibration(zz[~te], yy[~te], ww[~te], method=method)  # type: ignore[arg-type]
                out[te] = apply_calibration(cal, zz[te])
        except DataError as exc:  # e.g. a fold with a single class: this candidate cannot be judged
            failed[method] = str(exc)
            continue
        held[method] = out
    scores: dict[str, dict[str, float]] = {}
    # AP within each held-out fold, then averaged: pooling the folds would mix two different maps' scales
    # and charge a monotone map for the fold-to-fold difference in its fit (seed 14 of the 40k suite:
    # logistic lost 0.00201 pooled AP, exactly 0 within each fold, and E0 shipped uncalibrated, O/E 1.33).
    fold_ids = [k for k in range(folds) if (fold == k).any()]
    for method, p in held.items():
        sq = ww * (p - yy) ** 2
        ll = -ww * (yy * np.log(p) + (1 - yy) * np.log1p(-p))
        scores[method] = {
            "ap": float(
                np.mean([m.average_precision(yy[fold == k], p[fold == k], ww[fold == k]) for k in fold_ids])
            ),
            "brier": float(sq.sum() / ww.sum()),
            "log_loss": float(ll.sum() / ww.sum()),
        }
    base_ap = scores["none"]["ap"]
    passed = [c for c in SELECT_CANDIDATES if c in scores and not scores[c]["ap"] < base_ap - ap_tolerance]
    chosen = min(passed, key=lambda c: (scores[c]["brier"], SELECT_CANDIDATES.index(c)))
    final = fit_calibration(zz, yy, ww, method=chosen)  # type: ignore[arg-type]
    final["requested"] = "select"
    final["selection"] = {
        "rule": SELECTION_RULE.format(tol=ap_tolerance),
        "ap_tolerance": ap_tolerance,
        "folds": folds,
        "held_out": scores,
        "passed_ap_check": passed,
        "not_fitted": failed,
        "chosen": chosen,
        "held_out_ap_change_vs_none": scores[chosen]["ap"] - base_ap,
    }
    return final


def validate_calibration(cal: Any) -> None:
    """Check a calibration JSON object has the parameters its method needs."""
    if not isinstance(cal, dict) or "method" not in cal:
        raise DataError("calibration: expected an object with a 'method' key")
    m = cal["method"]
    if m == "none":
        return
    if m == "logistic":
        for k in ("a", "b"):
            if not isinstance(cal.get(k), int | float) or not np.isfinite(cal[k]):
                raise DataError(f"calibration: logistic parameter {k!r} missing or not a finite number")
        return
    if m == "beta":
        for k in ("c", "a", "b"):
            if not isinstance(cal.get(k), int | float) or not np.isfinite(cal[k]):
                raise DataError(f"calibration: beta parameter {k!r} missing or not a finite number")
        if cal["a"] < 0 or cal["b"] < 0 or not (cal["a"] > 0 or cal["b"] > 0):
            raise DataError("calibration: beta parameters 'a' and 'b' must be >= 0 and not both 0 (monotone)")
        return
    if m == "isotonic":
        xs, ys = cal.get("x"), cal.get("y")
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys) or not xs:
            raise DataError("calibration: isotonic knots 'x'/'y' missing or of different lengths")
        if np.any(np.diff(np.asarray(xs, dtype=np.float64)) < 0):
            raise DataError("calibration: isotonic knots 'x' not sorted")
        return
    raise DataError(f"calibration: unknown method {m!r}")


def apply_calibration(cal: dict[str, Any], z: Any) -> FloatArray:
    """Calibrated probabilities for odds-corrected logits ``z``; kept inside [1e-7, 1 − 1e-7]."""
    zz = np.asarray(z, dtype=np.float64)
    m = cal["method"]
    if m == "none":
        p = sigmoid(zz)
    elif m == "logistic":
        p = sigmoid(float(cal["a"]) + float(cal["b"]) * zz)
    elif m == "beta":
        ln_s, ln_1s = beta_features(zz)
        p = sigmoid(float(cal["c"]) + float(cal["a"]) * ln_s + float(cal["b"]) * ln_1s)
    elif m == "isotonic":
        p = np.interp(zz, np.asarray(cal["x"], dtype=np.float64), np.asarray(cal["y"], dtype=np.float64))
    else:
        raise DataError(f"calibration: unknown method {m!r}")
    return np.asarray(np.clip(p, PROB_EPS, 1 - PROB_EPS), dtype=np.float64)
