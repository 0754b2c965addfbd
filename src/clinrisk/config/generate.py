"""Generator settings (science.md §1). Owned by the generator module."""

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
    first_year: int = Field(2000, ge=1950, le=2100)
    last_year: int = Field(2023, ge=1950, le=2100, description="E: last calendar year observed")
    burn_in_years: int = Field(5, ge=0, le=20, description="look-back years before prediction rows start")
    calibration_horizon: int = Field(3, ge=1, le=10, description="H used to calibrate the intercept α")
    target_prevalence: float = Field(0.07, gt=0.0, lt=0.5, description="mean H-year risk over eligible rows")
    delay_mode: Literal["parametric", "mechanistic"] = "parametric"
    delay_severity: Literal["none", "default", "severe"] = "default"
    uninsured_delay_shift_prob: float = Field(0.5, ge=0.0, le=1.0)
    mcar_rate: float = Field(0.03, ge=0.0, le=0.5)
    unit_null_rate: float = Field(0.01, ge=0.0, le=0.5)
    unit_wrong_label_rate: float = Field(0.001, ge=0.0, le=0.5)
    hba1c_mislabel_rate: float = Field(0.0005, ge=0.0, le=0.5)
    secular_drift: bool = Field(True, description="coding sensitivity, BMI and testing rise across years")

    @model_validator(mode="after")
    def _calendar_is_consistent(self) -> GenerateConfig:
        if self.last_year - self.first_year < self.burn_in_years + self.calibration_horizon + 2:
            raise ValueError(
                "generate.last_year: calendar too short for burn_in_years + calibration_horizon "
                f"({self.first_year}..{self.last_year})"
            )
        return self
