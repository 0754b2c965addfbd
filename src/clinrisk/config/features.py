"""Feature, label and split settings (docs/science.md §3, §4.4, §5)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from clinrisk.config.base import Section


class FeaturesConfig(Section):
    """Feature building: rolling window X, LOCF, categorical caps."""

    window_years: int = Field(3, ge=1, le=10, description="X: rolling window over previous calendar years")
    locf: bool = Field(True, description="last value carried forward + years_since_last per lab")
    max_categories: int = Field(64, ge=2, le=1024, description="K: levels kept per categorical")
    min_category_share: float = Field(0.001, ge=0.0, lt=1.0, description="rarer levels become __OTHER__")
    other_dx_rollup_chars: int = Field(
        3, ge=0, le=10, description="roll other_dx_code up to its first N characters (0 = no roll-up)"
    )
    block_rows: int = Field(
        131_072,
        ge=0,
        le=2**31 - 1,
        description="build a shard's features and unit audit in blocks of whole patients of about this many raw "
        "rows (0 = the whole shard at once): the same outputs, with a block's intermediates in memory",
    )


class LabelsConfig(Section):
    """Label definition and diagnosis-year uncertainty strategy."""

    horizon_years: int = Field(3, ge=1, le=10, description="H: label = recorded diagnosis within (t, t+H]")
    strategy: Literal["E0", "E1b", "E2"] = "E0"
    # Assumed delay pmf over D ∈ {-1, 0, 1, 2, 3} used by E1b (support) and E2 (weights).
    assumed_delay_pmf: list[float] = Field(default_factory=lambda: [0.05, 0.40, 0.30, 0.15, 0.10])
    delay_support_min: int = Field(-1, ge=-5, le=0)
    min_history_years: int = Field(
        1, ge=0, le=20, description="a prediction row needs year >= entry_year + min_history_years"
    )
    assumed_annual_incidence: float = Field(
        0.024,
        ge=0.0,
        lt=1.0,
        description="h-bar for E2 soft labels of never-recorded patients (science §2.2)",
    )
    assumed_coding_drift_per_year: float = Field(
        0.02,
        ge=0.0,
        le=0.2,
        description="r of the assumed coding drift: the delay pmf describes the last year E, a diagnosis in "
        "year y is coded that year with probability min(1, (1+r)^(y-E)), so expected labels are year-aware",
    )
    assumed_delay_year: int | None = Field(
        None,
        ge=1900,
        le=2200,
        description="calendar year the assumed delay pmf describes (coding drift is relative to it); "
        "None: generate.last_year. A config fact, never derived from the data, so truncating the data at a "
        "label cutoff leaves every expected label unchanged",
    )
    calibration_target: Literal["expected", "recorded"] = Field(
        "expected",
        description="labels the calibration map is fitted to on the calibration part: the expected true label "
        "under the assumed delay model (true risk) or the recorded label (its bias included)",
    )

    @model_validator(mode="after")
    def _pmf_is_a_distribution(self) -> LabelsConfig:
        pmf = self.assumed_delay_pmf
        if not pmf or any(p < 0 for p in pmf) or abs(sum(pmf) - 1.0) > 1e-6:
            raise ValueError("labels.assumed_delay_pmf: must be non-negative and sum to 1")
        return self


class SplitConfig(Section):
    """Patient-disjoint hash buckets and the forward-in-time split with embargo (docs/science.md §4.4)."""

    train_buckets: tuple[int, int] = (0, 60)
    validation_buckets: tuple[int, int] = (60, 80)
    test_buckets: tuple[int, int] = (80, 100)
    train_years: tuple[int, int] = (2005, 2013)
    validation_years: tuple[int, int] = (2014, 2015)
    test_years: tuple[int, int] = (2019, 2020)
    temporal: bool = Field(True, description="False: patient-disjoint only, all years (method comparisons)")
    test_all_patients: bool = Field(
        True,
        description="temporal split: every eligible row of split.test_years is a test row, whatever the "
        "patient's bucket (forward in time, not patient-disjoint); False: test buckets only",
    )

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> SplitConfig:
        for name in ("train_buckets", "validation_buckets", "test_buckets"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi <= 100:
                raise ValueError(f"split.{name}: need 0 <= lo < hi <= 100, got {lo, hi}")
        for name in ("train_years", "validation_years", "test_years"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"split.{name}: first year {lo} after last year {hi}")
        return self
