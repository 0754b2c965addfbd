"""Monitoring-test fixtures: reuse the model tests' synthetic features dataset and trained bundle."""

from __future__ import annotations

from tests.model.conftest import synthetic_features_dir, trained_bundle_dir  # noqa: F401 - fixtures
