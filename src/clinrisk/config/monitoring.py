"""Drift monitoring, request logging, promotion-gate and experiment-comparison settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from clinrisk.config.base import Section

#: Metrics the promotion gate knows, with the direction in which they improve.
GATE_METRICS: dict[str, Literal["higher", "lower"]] = {
    "ap": "higher",
    "auc": "higher",
    "brier": "lower",
    "log_loss": "lower",
    "net_benefit": "higher",
    "calibration_error": "lower",  # |log(O/E)|: calibration-in-the-large, 0 = perfect
    "slice_auc_gap": "lower",  # worst slice: overall AUC − slice AUC
    "latency_p95_ms": "lower",
}


class MonitoringConfig(Section):
    """Drift bounds that trigger retraining, and the served-request log (Parquet sink)."""

    psi_feature_bound: float = Field(0.25, gt=0.0, description="PSI above this marks a feature drifted")
    psi_score_bound: float = Field(0.10, gt=0.0, description="score PSI above this triggers retraining")
    ks_score_bound: float = Field(0.10, gt=0.0, le=1.0, description="score KS (at reference deciles) bound")
    out_of_range_bound: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description=(
            "largest share of rows outside the training [min, max] on any one feature; per feature, not "
            "the union over features, whose sampling tails alone reach several % with ~150 features"
        ),
    )
    calendar_trend_features: list[str] = Field(
        default_factory=lambda: ["age", "history_years", "*_years_since", "*_ever"],
        description=(
            "features (fnmatch globs) that rise with calendar time per patient in a followed cohort, so "
            "later years leave the training range and shift by construction: their PSI and out-of-range "
            "shares are reported but not counted by the retrain criteria"
        ),
    )
    standardise_by: list[str] = Field(
        default_factory=list,
        description=(
            "features (exact names, e.g. [age]) whose reference distribution the logged rows are "
            "reweighted to before comparing (direct standardisation), so a population that only aged "
            "does not read as drift; empty = unweighted"
        ),
    )
    min_drifted_features: int = Field(
        3, ge=1, description="retrain when at least this many features exceed psi_feature_bound"
    )
    min_rows: int = Field(200, ge=1, description="fewer logged rows than this: no drift verdict")
    psi_floor: float = Field(1e-4, gt=0.0, lt=0.01, description="bin share floor so PSI stays finite")
    n_bins: int = Field(10, ge=2, le=100, description="score bins when the reference carries none")
    request_log_dir: Path | None = Field(None, description="request-log root; None = <run_dir>/request_log")
    request_log_flush_rows: int = Field(
        5_000, ge=1, description="buffered rows before the request logger writes a Parquet part"
    )

    @model_validator(mode="after")
    def _trend_patterns(self) -> MonitoringConfig:
        if any(not p.strip() for p in self.calendar_trend_features):
            raise ValueError(
                "monitoring.calendar_trend_features: patterns must be non-empty feature names/globs"
            )
        if any(not f.strip() for f in self.standardise_by) or len(set(self.standardise_by)) != len(
            self.standardise_by
        ):
            raise ValueError("monitoring.standardise_by: feature names must be non-empty and distinct")
        return self


class PromotionConfig(Section):
    """Challenger-vs-champion gate (validation metrics that need no true labels; docs/science.md §4.3).

    Rule: the challenger must improve ``primary`` by more than ``min_primary_gain`` and must not be worse
    than the champion by more than its tolerance on any guard metric (metrics missing on either side are
    skipped and reported). A missing champion makes the challenger champion (first deployment).
    """

    primary: str = Field("ap", description="metric the challenger must win on")
    min_primary_gain: float = Field(0.0, ge=0.0, description="required improvement on the primary")
    guards: dict[str, float] = Field(
        default_factory=lambda: {
            "brier": 0.0005,
            "net_benefit": 0.002,
            "calibration_error": 0.05,
            "slice_auc_gap": 0.02,
            "latency_p95_ms": 20.0,
        },
        description="metric -> largest tolerated worsening vs the champion",
    )
    metrics_section: str = Field("validation", description="section of the bundle metrics.json to read")
    p_t: float | None = Field(
        None, gt=0.0, lt=1.0, description="net-benefit p_t; None = the p_t frozen in the challenger bundle"
    )
    slice_columns: list[str] = Field(default_factory=lambda: ["insurance", "ethnicity", "sex"])
    min_slice_rows: int = Field(200, ge=10, description="slices smaller than this are not gated")

    @model_validator(mode="after")
    def _known_metrics(self) -> PromotionConfig:
        unknown = sorted({self.primary, *self.guards} - set(GATE_METRICS))
        if unknown:
            raise ValueError(f"promotion: unknown metric(s) {unknown}; known: {sorted(GATE_METRICS)}")
        if any(v < 0 for v in self.guards.values()):
            raise ValueError("promotion.guards: tolerances must be >= 0")
        return self


class ExperimentsConfig(Section):
    """How suites are compared: paired patient-cluster bootstrap of differences vs the baseline."""

    bootstrap_replicates: int = Field(200, ge=10, le=10_000, description="paired bootstrap B")
    ci_level: float = Field(0.95, gt=0.5, lt=1.0)
    output_dir: Path = Field(Path("outputs/experiments"), description="suite results and comparisons")
    continue_on_error: bool = Field(True, description="a failed run is recorded and the suite goes on")
    data_cache_dir: Path | None = Field(
        None,
        description="content-addressed cache of generated+validated data (None: off); a run whose "
        "generate/validate sections and seed match an entry reuses that data instead of regenerating it",
    )
