"""Config sections of the lead-conversion use case (strict: unknown keys fail with their dotted path).

Dates are ISO strings in YAML and :class:`datetime.date` here. The snapshot grid and the usage rows of the
synthetic generator share one weekday (``generate.start_date``), so a snapshot never falls inside a usage
week; real exports may use any grid.
"""

from __future__ import annotations

import datetime as dt
from typing import Self

from pydantic import Field, model_validator

from clinrisk.config.base import Section


class LeadsGenerateConfig(Section):
    """Synthetic generator: companies, weekly usage, conversions, and the weekly conversion hazard."""

    n_companies: int = Field(20_000, ge=10, le=10_000_000)
    companies_per_shard: int = Field(10_000, ge=10)  # the plan's fan-out: ceil(n_companies / this) shards
    start_date: dt.date = dt.date(2019, 1, 7)  # a Monday; usage week k ends at start_date + 7 (k + 1) days
    n_weeks: int = Field(78, ge=8, le=520)
    signup_weeks: int = Field(52, ge=1)  # companies sign up uniformly over the first `signup_weeks` weeks
    base_weekly_hazard: float = Field(0.004, gt=0.0, lt=0.5)  # hazard of a typical active company
    usage_effect: float = Field(
        0.55, ge=0.0
    )  # log-odds per unit of log1p(recent weekly actions), standardised
    seasonality: float = Field(0.5, ge=0.0)  # log-odds boost in the last month of a quarter
    post_conversion_usage_boost: float = Field(1.6, ge=1.0)  # paying customers use more (leakage bait)

    @model_validator(mode="after")
    def _signup_inside(self) -> Self:
        if self.signup_weeks >= self.n_weeks:
            raise ValueError("signup_weeks must be < n_weeks (every company needs observed weeks)")
        return self


class LeadsSourceConfig(Section):
    """Where the three CSV files come from: the generator (``synthetic``) or a folder of a real export."""

    # folder: a real export, read by `clinrisk ingest --source <folder>` (its calendar must be configured:
    # features.first_snapshot and features.data_end are then required)
    kind: str = Field("synthetic", pattern="^(synthetic|folder)$")
    folder: str | None = None  # informational: where the export came from
    max_quarantine_fraction: float = Field(0.05, ge=0.0, le=1.0)


class LeadsFeaturesConfig(Section):
    """Snapshot grid, label horizon and usage windows (one definition for training and serving)."""

    # The snapshot grid must not depend on which companies a shard holds, so it comes from the config:
    # with the generator, by default its first week + the longest window, and its last week; with a real
    # export both are required.
    first_snapshot: dt.date | None = None
    data_end: dt.date | None = None  # usage and conversions are observed up to (excluding) this day
    cadence_days: int = Field(14, ge=1, le=366)
    horizon_days: int = Field(28, ge=1, le=366)  # label: converts in (snapshot, snapshot + horizon_days]
    windows_days: list[int] = Field(default_factory=lambda: [7, 28, 91])
    top_industries: int = Field(12, ge=1, le=200)  # industries outside the most frequent become "other"

    @model_validator(mode="after")
    def _windows(self) -> Self:
        if not self.windows_days or any(w < 1 for w in self.windows_days):
            raise ValueError("windows_days must be a non-empty list of positive day counts")
        if len(set(self.windows_days)) != len(self.windows_days):
            raise ValueError("windows_days must not repeat a window")
        return self


class LeadsSplitConfig(Section):
    """The temporal half of the split: test snapshots start at ``test_from``.

    The company half is the shared ``split.{train,validation,test}_buckets`` (``SplitMix64(ID) mod 100``),
    so the platform and the use case agree on which companies are training companies. A snapshot is
    train/validation only when its label window ends before ``test_from`` (label embargo), and test only
    when it is on or after ``test_from``. The shared ``split.*_years`` do not apply.
    """

    test_from: dt.date | None = None  # default: the last `test_fraction` of the snapshot dates
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)


class LeadsEvaluateConfig(Section):
    """Sales capacity: how many leads the team can work per snapshot (fractions of the open leads)."""

    top_fractions: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1, 0.2])
    slices: list[str] = Field(default_factory=lambda: ["INDUSTRY", "EMPLOYEE_RANGE"])
    min_slice_rows: int = Field(50, ge=1)


class LeadsParams(Section):
    """The use case's ``params:`` section (the shared sections run, select, train, ... apply as for any
    use case; ``run.seed`` seeds the generator)."""

    generate: LeadsGenerateConfig = Field(default_factory=LeadsGenerateConfig)  # type: ignore[arg-type]
    source: LeadsSourceConfig = Field(default_factory=LeadsSourceConfig)  # type: ignore[arg-type]
    features: LeadsFeaturesConfig = Field(default_factory=LeadsFeaturesConfig)  # type: ignore[arg-type]
    split: LeadsSplitConfig = Field(default_factory=LeadsSplitConfig)  # type: ignore[arg-type]
    evaluate: LeadsEvaluateConfig = Field(default_factory=LeadsEvaluateConfig)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _grid_known(self) -> Self:
        f = self.features
        if self.source.kind == "folder" and (f.first_snapshot is None or f.data_end is None):
            raise ValueError(
                "features.first_snapshot and features.data_end are required with source.kind 'folder'"
            )
        return self

    def grid(self) -> tuple[dt.datetime, dt.datetime]:
        """``(first_snapshot, data_end)`` as datetimes (see :class:`LeadsFeaturesConfig`)."""
        f, g = self.features, self.generate
        weeks_back = -(-max(f.windows_days) // 7)  # the longest window, in whole weeks
        first = f.first_snapshot or g.start_date + dt.timedelta(days=7 * (1 + weeks_back))
        end = f.data_end or g.start_date + dt.timedelta(days=7 * g.n_weeks)
        return dt.datetime.combine(first, dt.time()), dt.datetime.combine(end, dt.time())

    def grid_origin(self) -> dt.datetime:
        """The generator's weekly grid (hazard weeks start on it)."""
        return dt.datetime.combine(self.generate.start_date, dt.time())
