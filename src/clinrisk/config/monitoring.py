"""Drift monitoring and promotion-gate settings."""

from __future__ import annotations

from pydantic import Field

from clinrisk.config.base import Section


class MonitoringConfig(Section):
    """Drift bounds that trigger retraining."""

    psi_feature_bound: float = Field(0.25, gt=0.0)
    psi_score_bound: float = Field(0.10, gt=0.0)
    out_of_range_bound: float = Field(0.05, ge=0.0, le=1.0)
    n_bins: int = Field(10, ge=2, le=100)
