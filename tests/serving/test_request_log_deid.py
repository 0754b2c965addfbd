"""The server's request log is de-identified: no direct or quasi-identifiers, banded age, rounded values,
a keyed pseudonymous patient key, enforced retention - and the drift job still runs on it."""

from __future__ import annotations

import copy
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from clinrisk.request_log import (
    PATIENT_KEY,
    QUASI_IDENTIFIER_FEATURES,
    enforce_retention,
    patient_key,
    read_request_log,
)

# Direct identifiers and quasi-identifiers of the request (static attributes, dates, raw measurements).
FORBIDDEN_COLUMNS = {
    "patient_id", "birth_year", "entry_year", "year", "site_id", "ethnicity", "family_history",
    "other_dx_code", "height_cm", "height_value", "weight_value", "hba1c_value", "glucose_value",
    "ldl_value", "hdl_value", "tc_value", "tg_value", "creatinine_value", "sbp_mmhg", "history",
}  # fmt: skip


@pytest.fixture
def logged(
    bundle_dir: Path, instances: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> pl.DataFrame:
    from fastapi.testclient import TestClient

    from clinrisk.config import ServingConfig
    from clinrisk.serving.predictor import ClinriskModel
    from clinrisk.serving.server import build_app

    monkeypatch.setenv("CLINRISK_REQUEST_LOG_KEY", "k1")
    log_dir = tmp_path / "log"
    old = log_dir / f"date={(date.today() - timedelta(days=400)).isoformat()}"
    old.mkdir(parents=True)
    (old / "part-old.parquet").write_bytes(b"")
    cfg = ServingConfig(request_log_dir=str(log_dir), request_log_retention_days=30)
    model = ClinriskModel(cfg.model_name, bundle_dir, cfg)
    model.load()
    assert not old.exists()  # retention enforced when the logger starts
    client = TestClient(build_app(model, cfg))
    marked = copy.deepcopy(instances[:20])
    marked[0]["site_id"] = 77
    for body in (marked[:10], marked[10:], marked[:1]):
        assert client.post("/v1/models/clinrisk:predict", json={"instances": body}).status_code == 200
    model.stop()  # flushes the log
    return read_request_log(log_dir)


def test_no_identifier_is_written(logged: pl.DataFrame, instances: list[dict[str, Any]]) -> None:
    assert logged.height == 21
    assert not FORBIDDEN_COLUMNS & set(logged.columns)
    assert not QUASI_IDENTIFIER_FEATURES & set(logged.columns)
    # Age only as the midpoint of a 5-year band.
    assert ((logged["age"] - 2.5) % 5 == 0).all()
    # No string column carries a static attribute's value.
    strings = {c for c, d in logged.schema.items() if d == pl.String}
    values = {str(v) for inst in instances for k, v in inst.items() if k != "history"}
    for c in strings - {"model_version", "timestamp", PATIENT_KEY, "sex", "region", "insurance"}:
        assert not set(logged[c].drop_nulls().to_list()) & values, c


def test_patient_key_is_keyed_and_links_repeat_requests(logged: pl.DataFrame) -> None:
    keys = logged[PATIENT_KEY].to_list()
    assert len(keys) == 21 and all(len(k) == 16 for k in keys)
    assert keys[20] == keys[0]  # the same patient sent again
    assert len(set(keys[:20])) == 20
    static = {
        "sex": "F",
        "birth_year": 1960,
        "region": "S",
        "site_id": 1,
        "ethnicity": "x",
        "entry_year": 2000,
    }
    assert patient_key(b"k1", static) != patient_key(b"k2", static)


def test_drift_job_reads_the_deidentified_log(logged: pl.DataFrame, bundle_dir: Path) -> None:
    from clinrisk.config import load_config
    from clinrisk.drift import drift_report
    from clinrisk.io import read_json

    report = drift_report(read_json(bundle_dir / "reference_stats.json"), logged, load_config(None, []))
    assert report["decision"] in ("ok", "retrain", "insufficient_data")


def test_retention_deletes_only_old_day_folders(tmp_path: Path) -> None:
    today = date(2026, 12, 3)
    for d in (today, today - timedelta(days=30), today - timedelta(days=31)):
        (tmp_path / f"date={d.isoformat()}").mkdir()
    (tmp_path / "date=garbage").mkdir()
    deleted = enforce_retention(tmp_path, 30, today=today)
    assert [p.name for p in deleted] == ["date=2026-11-02"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "date=2026-11-03",
        "date=2026-12-03",
        "date=garbage",
    ]
