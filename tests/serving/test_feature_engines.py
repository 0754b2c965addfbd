"""The two serving feature engines (row-wise default, polars feature query) answer identically: responses,
reason codes and the request log; and the start-up check refuses a row-wise engine that drifts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from clinrisk.config import ServingConfig
from clinrisk.errors import DataError
from clinrisk.serving.inference import ServingEngine


def _engine(bundle_dir: Path, engine: str, **kw: Any) -> ServingEngine:
    return ServingEngine.from_dir(
        bundle_dir, ServingConfig(feature_engine=engine, reason_codes_top_k=3, **kw)
    )


def test_responses_and_reasons_identical(bundle_dir: Path, instances: list[dict[str, Any]]) -> None:
    body = {"instances": instances[:16]}
    fast = _engine(bundle_dir, "rowwise").score(body).response
    slow = _engine(bundle_dir, "polars").score(body).response
    assert fast == slow
    assert all(len(p["reasons"]) == 3 for p in fast["predictions"])


def test_request_log_identical(
    bundle_dir: Path, instances: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clinrisk.request_log import read_request_log

    monkeypatch.setenv("CLINRISK_REQUEST_LOG_KEY", "test-secret")  # same pseudonyms in both engines

    logged = {}
    for name in ("rowwise", "polars"):
        eng = _engine(bundle_dir, name, request_log_dir=str(tmp_path / name))
        eng.score({"instances": instances[:5]})
        eng.score({"instances": instances[5:7]})
        eng.close()
        logged[name] = read_request_log(tmp_path / name)
    a, b = logged["rowwise"], logged["polars"]
    assert a.height == 7
    feature_cols = [c for c in a.columns if c not in ("timestamp", "request_id")]
    assert a.select(feature_cols).equals(b.select(feature_cols))
    assert "patient_id" not in a.columns


def test_start_up_check_refuses_a_drifting_rowwise_engine(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the row-wise evaluator ever disagrees with the feature function, the server is not ready."""
    from clinrisk import features_rowwise

    eng = _engine(bundle_dir, "rowwise")
    assert eng.self_check()["examples_checked"] >= 1
    real = features_rowwise.egfr_ckd_epi_2021

    def slightly_off(scr: float | None, age: int, female: bool) -> float | None:
        v = real(scr, age, female)
        return None if v is None else v * (1 + 1e-5)  # a few Float32 ulps

    monkeypatch.setattr(features_rowwise, "egfr_ckd_epi_2021", slightly_off)
    polars_only = _engine(bundle_dir, "polars")
    polars_only.self_check()  # the polars engine is not compared, so it stays ready
    # the serving fixture's bundle is trained on every feature, so the perturbed eGFR reaches the matrix
    assert any(n.startswith("egfr") for n in eng.bundle.feature_names)
    with pytest.raises(DataError, match="row-wise feature engine differs"):
        _engine(bundle_dir, "rowwise").self_check()


def test_batches_of_many_patients_match(bundle_dir: Path, instances: list[dict[str, Any]]) -> None:
    eng = _engine(bundle_dir, "rowwise")
    reqs = [eng.validate({"instances": instances[i : i + 3]}) for i in range(0, 15, 3)]
    fast = eng.current_features(reqs, engine="rowwise")
    slow = eng.current_features(reqs, engine="polars")
    assert np.array_equal(fast.matrix, slow.matrix, equal_nan=True)
    assert isinstance(fast.to_frame(0, 3), pl.DataFrame) and fast.to_frame(0, 3).height == 3
