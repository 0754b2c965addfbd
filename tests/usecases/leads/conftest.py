"""Lead-conversion fixtures: one small simulated export per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinrisk.usecases.leads.config import LeadsFeaturesConfig, LeadsGenerateConfig, LeadsParams
from clinrisk.usecases.leads.generator import LeadsData, simulate, write_csvs

SMALL = LeadsGenerateConfig(n_companies=600, n_weeks=40, signup_weeks=20, base_weekly_hazard=0.01)
SMALL_FEATURES = LeadsFeaturesConfig(cadence_days=14, horizon_days=28, windows_days=[7, 28, 63])
SMALL_PARAMS = LeadsParams(generate=SMALL, features=SMALL_FEATURES)


@pytest.fixture(scope="session")
def leads_data() -> LeadsData:
    return simulate(SMALL, seed=3)


@pytest.fixture
def export_dir(tmp_path: Path, leads_data: LeadsData) -> Path:
    """A fresh folder holding the three CSV files of ``leads_data`` (tests may corrupt it)."""
    write_csvs(leads_data, tmp_path)
    return tmp_path
