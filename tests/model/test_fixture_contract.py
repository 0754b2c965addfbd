"""The synthetic model fixtures speak the real feature contract: every fixture feature is one that
``build_feature_frame`` produces, with the same dtype, so model tests exercise names serving can build."""

from __future__ import annotations

from clinrisk.config import load_config
from clinrisk.features import fit_feature_spec
from tests.features.synth import synthetic_raw
from tests.model.conftest import FEATURES


def test_fixture_features_are_real_feature_names_and_dtypes() -> None:
    cfg = load_config(None)
    spec = fit_feature_spec(synthetic_raw(50, seed=3).lazy(), cfg)
    missing = sorted(set(FEATURES) - set(spec.feature_names))
    assert not missing, f"fixture features the feature function cannot produce: {missing}"
    assert {name: spec.dtypes[name] for name in FEATURES} == FEATURES
