"""Prometheus metrics of the predictor, on KServe's ``/metrics`` (the default registry).

KServe already exports its latency histograms (``request_preprocess_seconds``, ``request_predict_seconds``,
``request_postprocess_seconds``); these add what an operator of a clinical model needs: requests by outcome,
rejected inputs by reason, out-of-distribution flags and the distribution of predicted probabilities.
Label values are bounded sets (outcomes, reasons, feature names), never patient data.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

PROBABILITY_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
INSTANCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)


@dataclass(frozen=True)
class ServingMetrics:
    """The collectors (created once per process: the registry refuses duplicates)."""

    requests: Any
    rejected: Any
    ood_instances: Any
    ood_features: Any
    probability: Any
    instances: Any
    auth_failures: Any
    value_warnings: Any

    def observe_success(self, model: str, probabilities: list[float], ood_features: list[list[str]]) -> None:
        """Count a served request: outcome, probabilities, OOD flags."""
        self.requests.labels(model, "ok").inc()
        self.instances.labels(model).observe(len(probabilities))
        hist = self.probability.labels(model)
        for p in probabilities:
            hist.observe(p)
        self.observe_ood(model, ood_features)

    def observe_ood(self, model: str, ood_features: list[list[str]]) -> None:
        for feats in ood_features:
            if feats:
                self.ood_instances.labels(model).inc()
            for f in feats:
                self.ood_features.labels(model, f).inc()

    def observe_warnings(self, model: str, warnings: list[list[dict[str, Any]]]) -> None:
        """Count dropped / unit-inferred values by field and reason (labels only, never the value)."""
        for per_instance in warnings:
            for w in per_instance:
                # The raw field name (not history[j].field): a bounded label set.
                self.value_warnings.labels(model, w["field"].rsplit(".", 1)[-1], w["reason"]).inc()

    def observe_rejected(self, model: str, outcome: str, reason: str) -> None:
        """Count a refused request (outcome = HTTP-level class, reason = the specific check)."""
        self.requests.labels(model, outcome).inc()
        self.rejected.labels(model, reason).inc()


@functools.cache
def serving_metrics() -> ServingMetrics:
    """The process-wide collectors, registered on first use (not at import)."""
    from prometheus_client import Counter, Histogram

    return ServingMetrics(
        requests=Counter("clinrisk_requests", "Prediction requests by outcome", ["model_name", "outcome"]),
        rejected=Counter(
            "clinrisk_rejected_inputs", "Rejected requests by validation reason", ["model_name", "reason"]
        ),
        ood_instances=Counter(
            "clinrisk_ood_instances", "Instances flagged out of distribution", ["model_name"]
        ),
        ood_features=Counter(
            "clinrisk_ood_features", "Out-of-distribution flags per feature", ["model_name", "feature"]
        ),
        probability=Histogram(
            "clinrisk_predicted_probability",
            "Predicted probabilities",
            ["model_name"],
            buckets=PROBABILITY_BUCKETS,
        ),
        instances=Histogram(
            "clinrisk_instances_per_request",
            "Instances per served request",
            ["model_name"],
            buckets=INSTANCE_BUCKETS,
        ),
        auth_failures=Counter(
            "clinrisk_auth_failures",
            "Requests refused for a missing or wrong bearer token",
            ["model_name", "reason"],
        ),
        value_warnings=Counter(
            "clinrisk_value_warnings",
            "Values dropped or unit-inferred by the feature function, by field and reason",
            ["model_name", "field", "reason"],
        ),
    )
