"""The real `clinrisk serve` process (kserve.ModelServer on 127.0.0.1): every route, every error status,
metrics, and training/serving parity over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest

from clinrisk.serving.client import example_request, predict

WINDOW = 3


@pytest.fixture(scope="module")
def http(live_server: str) -> Any:
    with httpx.Client(base_url=live_server, timeout=30) as c:
        yield c


def test_readiness_and_live_routes(http: httpx.Client) -> None:
    assert http.get("/v1/models/clinrisk").json() == {"name": "clinrisk", "ready": True}
    assert http.get("/").status_code == 200
    assert "clinrisk" in http.get("/v1/models").json()["models"]


def test_server_binds_loopback_only(live_server: str) -> None:
    assert live_server.startswith("http://127.0.0.1:")


@pytest.mark.parametrize(
    ("path", "content", "headers", "status"),
    [
        ("/v1/models/clinrisk:predict", "{}", {"content-type": "text/plain"}, 415),
        ("/v1/models/clinrisk:predict", "{bad", {"content-type": "application/json"}, 400),
        ("/v1/models/clinrisk:predict", '{"instances": []}', {"content-type": "application/json"}, 400),
        (
            "/v1/models/clinrisk:predict",
            '{"instances": [{"sex": "F"}]}',
            {"content-type": "application/json"},
            400,
        ),
        ("/v1/models/nope:predict", '{"instances": []}', {"content-type": "application/json"}, 404),
    ],
)
def test_error_statuses(
    http: httpx.Client, path: str, content: str, headers: dict[str, str], status: int
) -> None:
    r = http.post(path, content=content, headers=headers)
    assert r.status_code == status
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_missing_field_names_instance(http: httpx.Client, instances: list[dict[str, Any]]) -> None:
    bad = json.loads(json.dumps(instances[:2]))
    del bad[1]["history"][0]["year"]
    r = http.post("/v1/models/clinrisk:predict", json={"instances": bad})
    assert r.status_code == 400 and "instances[1].history[0].year" in r.json()["error"]


def test_parity_http_vs_batch_features(live_server: str, bundle_dir: Path, holdout_raw: pl.DataFrame) -> None:
    """Served probabilities == bundle.predict_proba on features batch-built from the same patient-years."""
    from clinrisk.bundle import load_bundle
    from clinrisk.features import FeatureSpec, build_feature_frame
    from clinrisk.serving.request import instance_from_rows

    bundle = load_bundle(bundle_dir)
    spec = FeatureSpec.model_validate(bundle.spec)
    last = holdout_raw.group_by("patient_id").agg(pl.col("year").max().alias("_t"))
    window = (
        holdout_raw.join(last, on="patient_id")
        .filter(pl.col("year") > pl.col("_t") - WINDOW - 1)
        .filter(~pl.col("dx_E11").any().over("patient_id"))
        .sort("patient_id", "year")
    )
    pids = window["patient_id"].unique().sort().to_list()[:20]
    window = window.filter(pl.col("patient_id").is_in(pids))
    # The batch path: all sampled patients in ONE frame, features for every row, current rows kept.
    feats = build_feature_frame(window.drop("_t").lazy(), spec).collect()
    current = feats.join(last, on="patient_id").filter(pl.col("year") == pl.col("_t")).sort("patient_id")
    assert current["patient_id"].to_list() == pids
    want = bundle.predict_proba(current)
    # The serving path: one JSON instance per patient, over HTTP.
    insts = [
        instance_from_rows(part.drop("_t").to_dicts())
        for part in window.partition_by("patient_id", maintain_order=True)
    ]
    got = np.array([p["probability"] for p in predict(live_server, insts)["predictions"]])
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-9


def test_parity_full_history_equals_training_features(
    live_server: str, bundle_dir: Path, holdout_raw: pl.DataFrame
) -> None:
    """With each patient's full history, the served probability equals the batch evaluation's on the
    feature rows the features stage builds from all of that patient's years (LOCF, ever-flags and the
    carried height included), exactly."""
    from clinrisk.bundle import load_bundle
    from clinrisk.features import FeatureSpec, build_feature_frame
    from clinrisk.serving.request import instances_from_raw

    bundle = load_bundle(bundle_dir)
    spec = FeatureSpec.model_validate(bundle.spec)
    insts = instances_from_raw(holdout_raw, WINDOW, n=25, full_history=True)
    assert max(len(i["history"]) for i in insts) > WINDOW + 1
    feats = build_feature_frame(holdout_raw.lazy(), spec).collect()
    last = holdout_raw.group_by("patient_id").agg(pl.col("year").max().alias("_t"))
    clean = holdout_raw.group_by("patient_id").agg((~pl.col("dx_E11").any()).alias("_ok"))
    current = (
        feats.join(last, on="patient_id")
        .join(clean, on="patient_id")
        .filter((pl.col("year") == pl.col("_t")) & pl.col("_ok"))
        .sort("patient_id")
        .head(len(insts))
    )
    want = bundle.predict_proba(current)
    got = np.array([p["probability"] for p in predict(live_server, insts)["predictions"]])
    assert got.shape == want.shape
    assert np.array_equal(got, want)


def test_example_request_from_validated_shard(
    live_server: str, holdout_raw: pl.DataFrame, tmp_path: Path
) -> None:
    from clinrisk.io import shard_file

    f = shard_file(tmp_path / "validated", 0)
    f.parent.mkdir(parents=True)
    holdout_raw.write_parquet(f)
    req = example_request(f, WINDOW, n=3)
    assert len(req["instances"]) == 3
    out = predict(live_server, req["instances"], parameters={"reason_codes_top_k": 2})
    assert len(out["predictions"]) == 3 and all(len(p["reasons"]) == 2 for p in out["predictions"])


def test_metrics_endpoint(http: httpx.Client, instances: list[dict[str, Any]]) -> None:
    http.post("/v1/models/clinrisk:predict", json={"instances": instances[:1]})
    text = http.get("/metrics").text
    for name in (
        "clinrisk_requests_total",
        "clinrisk_rejected_inputs_total",
        "clinrisk_predicted_probability_bucket",
        "request_predict_seconds_bucket",
    ):
        assert name in text, name
