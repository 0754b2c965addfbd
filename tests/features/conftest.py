from __future__ import annotations

import pytest

from clinrisk.config import ClinriskConfig, load_config
from clinrisk.features import FeatureSpec, fit_feature_spec
from tests.features.synth import synthetic_raw


@pytest.fixture(scope="session")
def cfg() -> ClinriskConfig:
    return load_config(None, ["split.temporal=false"])


@pytest.fixture(scope="session")
def raw_small():
    return synthetic_raw(300, seed=7)


@pytest.fixture(scope="session")
def spec(raw_small, cfg) -> FeatureSpec:
    return fit_feature_spec(raw_small.lazy(), cfg)
