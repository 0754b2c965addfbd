"""Generator settings (docs/science.md §1). Owned by the generator module."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from clinrisk.config.base import Section


class GenerateConfig(Section):
    """Synthetic patient-year generator: cohort size, calendar, delay model, faults, drift."""

    n_patients: int = Field(200_000, ge=10, description="patients; about 10 rows each")
    n_shards: int = Field(8, ge=1, le=4096, description="output shards (a patient never spans shards)")
    block_size: int = Field(
        1_000, ge=10, description="patients per RNG block; fixes determinism across shards"
    )
    chunk_patients: int = Field(
        10_000, ge=10, description="patients simulated together in memory (bounds peak RSS)"
    )
    first_year: int = Field(2000, ge=1950, le=2100)
    last_year: int = Field(2023, ge=1950, le=2100, description="E: last calendar year observed")
    burn_in_years: int = Field(5, ge=0, le=20, description="look-back years before prediction rows start")
    followup_years: int = Field(5, ge=1, le=10, description="onsets are drawn up to E + this many years")
    # Cohort dynamics (§1.1).
    entry_geometric_p: float = Field(0.15, gt=0.0, le=1.0, description="entry = first_year + Geom(p)")
    disenrol_rate: float = Field(0.04, ge=0.0, lt=1.0, description="yearly disenrolment hazard")
    gompertz_intercept: float = Field(-10.5, description="death hazard exp(a + b·age)")
    gompertz_slope: float = Field(0.09, ge=0.0)
    # Onset intercept (§1.6): bisection on a pilot sample unless fixed here.
    calibration_horizon: int = Field(3, ge=1, le=10, description="H used to calibrate the intercept α")
    target_prevalence: float = Field(0.07, gt=0.0, lt=0.5, description="mean H-year risk over eligible rows")
    calibration_patients: int = Field(20_000, ge=100, description="pilot patients for the α bisection")
    alpha: float | None = Field(None, ge=-30.0, le=10.0, description="fixed α (skips the bisection)")
    # Recorded diagnosis year (§1.7).
    delay_mode: Literal["parametric", "mechanistic"] = "parametric"
    delay_severity: Literal["none", "default", "severe"] = "default"
    delay_pmf: list[float] | None = Field(
        None, description="custom pmf over D ∈ {-1,0,1,2,3}; overrides delay_severity"
    )
    uninsured_delay_shift_prob: float = Field(0.5, ge=0.0, le=1.0)
    false_code_rate: float = Field(
        0.0, ge=0.0, le=0.1, description="optional false-positive E11 codes in never-onset patients"
    )
    # Observation (§1.4) and units layer (§1.8).
    mcar_rate: float = Field(0.03, ge=0.0, le=0.5)
    imperial_vitals_share: float = Field(0.5, ge=0.0, le=1.0, description="vitals records in in/lb")
    ne_si_site_share: float = Field(0.3, ge=0.0, le=1.0, description="share of NE sites reporting SI")
    unit_null_rate: float = Field(0.01, ge=0.0, le=0.5)
    unit_wrong_label_rate: float = Field(0.001, ge=0.0, le=0.5)
    hba1c_mislabel_rate: float = Field(0.0005, ge=0.0, le=0.5)
    # Secular drift across calendar years.
    secular_drift: bool = Field(True, description="coding sensitivity, BMI and testing rise across years")
    secular_bmi_per_year: float = Field(0.1, ge=0.0, le=1.0, description="kg/m² per calendar year")
    secular_test_logit_per_year: float = Field(0.03, ge=0.0, le=0.5)
    secular_coding_per_year: float = Field(
        0.02,
        ge=0.0,
        le=0.2,
        description="relative yearly rise in diagnosis coding sensitivity, E11 included: "
        "sensitivity(t) = sensitivity(E)·(1+r)^(t−E), capped at 1",
    )

    @model_validator(mode="after")
    def _calendar_is_consistent(self) -> GenerateConfig:
        if self.last_year - self.first_year < self.burn_in_years + self.calibration_horizon + 2:
            raise ValueError(
                "generate.last_year: calendar too short for burn_in_years + calibration_horizon "
                f"({self.first_year}..{self.last_year})"
            )
        if self.delay_pmf is not None:
            pmf = self.delay_pmf
            if len(pmf) != 5 or any(p < 0 for p in pmf) or abs(sum(pmf) - 1.0) > 1e-6:
                raise ValueError(
                    "generate.delay_pmf: need 5 non-negative probabilities over D = -1..3 summing to 1"
                )
        return self
