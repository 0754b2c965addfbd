"""The out-of-distribution detector (clinrisk.ood): fit on training rows, false-positive rate on held-out
in-distribution rows, detection of planted anomalies, and per-instance flags in a served batch."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clinrisk.ood import OODDetector, detector_rates, fit_detector


def _population(n: int, seed: int) -> np.ndarray:
    """Columns shaped like the clinical features: Gaussian labs, heavy-tailed lognormal lipids and visit
    counts, mostly-zero counts, a near-constant column, and missing values."""
    rng = np.random.default_rng(seed)
    cols = [rng.normal(5.6, 0.6, n) for _ in range(30)]
    cols += [rng.lognormal(4.8, 0.5, n) for _ in range(30)]
    cols += [rng.poisson(rng.gamma(2.0, 3.0, n)).astype(float) for _ in range(20)]
    cols += [(rng.random(n) < 0.03) * rng.poisson(2.0, n).astype(float) for _ in range(15)]
    cols += [np.where(rng.random(n) < 0.999, 1.0, 2.0) for _ in range(5)]
    X = np.column_stack(cols)
    X[rng.random(X.shape) < 0.1] = np.nan
    return X


def test_detector_fpr_and_planted_detection_at_training_scale() -> None:
    X_train, X_test = _population(60_000, 1), _population(20_000, 2)
    names = [f"f{j}" for j in range(X_train.shape[1])]
    det = fit_detector(X_train, X_test[:10_000], names, seed=3)
    assert det["rates"]["false_positive_rate"] <= 0.01
    assert det["rates"]["planted_detection_rate"] >= 0.95
    # Independent held-out rows (the "test split") behave the same.
    rates = detector_rates(det, X_test[10_000:], seed=4, split="test")
    assert rates["false_positive_rate"] <= 0.01 and rates["planted_detection_rate"] >= 0.95
    flags = OODDetector(json.loads(json.dumps(det)), names).flags(X_test[10_000:])
    assert np.mean([bool(f) for f in flags]) == pytest.approx(rates["false_positive_rate"])


def test_bundle_states_method_and_rates(bundle_dir: Path) -> None:
    det = json.loads((bundle_dir / "ood_detector.json").read_text())
    assert det["method"] == "range-excess" and det["fit_rows"] > 0
    r = det["rates"]
    assert r["holdout_split"] == "validation" and 0.0 <= r["false_positive_rate"] <= 1.0
    assert r["planted_detection_rate"] >= 0.95
    # Calendar-trend features and indicators are never checked.
    assert "age" not in det["features"] and not any(n.endswith("_missing") for n in det["features"])


def test_served_batch_flags_only_the_anomalous_instance(
    make_client: Callable[..., Any], instances: list[dict[str, Any]]
) -> None:
    client = make_client()
    batch = copy.deepcopy(instances[:6])
    odd = batch[3]["history"][-1]
    odd.update(sbp_mmhg=260.0, visits=80)
    r = client.post("/v1/models/clinrisk:predict", json={"instances": batch})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert preds[3]["out_of_distribution"] and preds[3]["ood_features"]
    assert all(0 < p["probability"] < 1 for p in preds)
    # Rejection of the whole batch happens only when configured.
    strict = make_client(reject_out_of_distribution=True)
    assert strict.post("/v1/models/clinrisk:predict", json={"instances": batch}).status_code == 422
