"""In-process tests on KServe's own FastAPI app (same routes, middleware and handlers as the server)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

PREDICT = "/v1/models/clinrisk:predict"
READY = "/v1/models/clinrisk"


@pytest.fixture(scope="module")
def client(make_client: Callable[..., Any]) -> Any:
    return make_client(reason_codes_top_k=0)


def test_readiness_and_prediction_shape(client: Any, instances: list[dict[str, Any]]) -> None:
    r = client.get(READY)
    assert r.status_code == 200 and r.json() == {"name": "clinrisk", "ready": True}
    r = client.post(PREDICT, json={"instances": instances[:5]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["model_version"], str) and body["model_version"]
    assert len(body["predictions"]) == 5
    for p in body["predictions"]:
        assert set(p) == {
            "probability",
            "label",
            "threshold",
            "out_of_distribution",
            "ood_features",
            "warnings",
            "reasons",
        }
        assert 0.0 < p["probability"] < 1.0
        assert p["label"] == int(p["probability"] >= p["threshold"])
        assert p["out_of_distribution"] == bool(p["ood_features"])
        assert p["reasons"] == []


def test_json_with_charset_reaches_model_as_bytes_and_is_served(
    client: Any, instances: list[dict[str, Any]]
) -> None:
    r = client.post(
        PREDICT,
        content=json.dumps({"instances": instances[:1]}),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200, r.text
    plain = client.post(PREDICT, json={"instances": instances[:1]}).json()
    assert r.json()["predictions"] == plain["predictions"]


@pytest.mark.parametrize("ct", ["text/plain", "application/octet-stream", "application/xml"])
def test_wrong_content_type_is_415(client: Any, instances: list[dict[str, Any]], ct: str) -> None:
    r = client.post(PREDICT, content=json.dumps({"instances": instances[:1]}), headers={"content-type": ct})
    assert r.status_code == 415
    assert "Content-Type" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "ct"),
    [
        ("{not json", "application/json"),
        ('{"instances": [NaN]}', "application/json"),
        ("{oops", "application/json; charset=utf-8"),
    ],
)
def test_malformed_json_is_400(client: Any, body: str, ct: str) -> None:
    r = client.post(PREDICT, content=body, headers={"content-type": ct})
    assert r.status_code == 400
    assert "malformed JSON" in r.json()["error"]


def test_schema_violation_is_400_naming_instance_and_field(
    client: Any, instances: list[dict[str, Any]]
) -> None:
    bad = json.loads(json.dumps(instances[:3]))
    bad[2]["history"][-1]["hba1c_unit"] = "g/L"
    r = client.post(PREDICT, json={"instances": bad})
    assert r.status_code == 400
    err = r.json()["error"]
    assert "instances[2]" in err and "hba1c_unit" in err
    assert "predictions" not in r.json()  # no partial answer


def test_empty_and_oversized_instances_are_400(
    make_client: Callable[..., Any], instances: list[dict[str, Any]]
) -> None:
    c = make_client(max_instances=4)
    assert c.post(PREDICT, json={"instances": []}).status_code == 400
    r = c.post(PREDICT, json={"instances": instances[:5]})
    assert r.status_code == 400 and "limit 4" in r.json()["error"]
    assert c.post(PREDICT, json={"instances": instances[:4]}).status_code == 200


def test_unknown_model_is_404(client: Any, instances: list[dict[str, Any]]) -> None:
    assert client.get("/v1/models/other").status_code == 404
    r = client.post("/v1/models/other:predict", json={"instances": instances[:1]})
    assert r.status_code == 404 and "error" in r.json()


def test_not_ready_model_is_503(make_client: Callable[..., Any], instances: list[dict[str, Any]]) -> None:
    c = make_client(load=False)
    assert c.get(READY).status_code == 503
    r = c.post(PREDICT, json={"instances": instances[:1]})
    assert r.status_code == 503 and "not ready" in r.json()["error"]


def _ood_instance(inst: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(inst))
    for rec in out["history"]:
        rec.update(hba1c_value=16.0, hba1c_unit="%", glucose_value=590.0, glucose_unit="mg/dL")
    return out


def test_out_of_distribution_is_flagged(client: Any, instances: list[dict[str, Any]]) -> None:
    r = client.post(PREDICT, json={"instances": [instances[0], _ood_instance(instances[0])]})
    assert r.status_code == 200
    flagged = r.json()["predictions"][1]
    assert flagged["out_of_distribution"] is True
    assert any(f.startswith(("hba1c", "glucose")) for f in flagged["ood_features"])


def test_out_of_distribution_rejected_when_configured(
    make_client: Callable[..., Any], instances: list[dict[str, Any]]
) -> None:
    c = make_client(reject_out_of_distribution=True)
    r = c.post(PREDICT, json={"instances": [instances[0], _ood_instance(instances[0])]})
    assert r.status_code == 422
    assert "anomaly detected" in r.json()["error"] and "instances[1]" in r.json()["error"]


def test_reasons_top_k_from_config_and_request(
    make_client: Callable[..., Any], bundle_dir: Any, instances: list[dict[str, Any]]
) -> None:
    from clinrisk.bundle import load_bundle

    c = make_client(reason_codes_top_k=3)
    p = c.post(PREDICT, json={"instances": instances[:2]}).json()["predictions"]
    assert all(len(x["reasons"]) == 3 for x in p)
    mags = [abs(r["contribution"]) for r in p[0]["reasons"]]
    assert mags == sorted(mags, reverse=True)
    names = load_bundle(bundle_dir).feature_names
    assert all(r["feature"] in names for r in p[0]["reasons"])
    p5 = c.post(PREDICT, json={"instances": instances[:1], "parameters": {"reason_codes_top_k": 5}}).json()
    assert len(p5["predictions"][0]["reasons"]) == 5
    # the reasons do not change the probability
    assert np.isclose(p5["predictions"][0]["probability"], p[0]["probability"], rtol=0, atol=0)


def test_metrics_count_outcomes_reasons_and_probabilities(
    client: Any, instances: list[dict[str, Any]]
) -> None:
    def scrape() -> str:
        r = client.get("/metrics")
        assert r.status_code == 200
        return r.text

    def value(text: str, prefix: str) -> float:
        lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    before = scrape()
    client.post(PREDICT, json={"instances": instances[:2]})
    client.post(PREDICT, content="x", headers={"content-type": "text/plain"})
    client.post(PREDICT, json={"instances": []})
    after = scrape()
    for key, delta in [
        ('clinrisk_requests_total{model_name="clinrisk",outcome="ok"}', 1),
        ('clinrisk_requests_total{model_name="clinrisk",outcome="unsupported_media_type"}', 1),
        ('clinrisk_rejected_inputs_total{model_name="clinrisk",reason="instances_empty"}', 1),
        ('clinrisk_predicted_probability_count{model_name="clinrisk"}', 2),
    ]:
        assert value(after, key) - value(before, key) == delta, key
    assert "request_predict_seconds" in after  # KServe's latency histograms


def test_self_check_refuses_a_bundle_whose_model_disagrees(
    bundle_dir: Any, tmp_path: Any, instances: list[dict[str, Any]]
) -> None:
    import shutil

    from clinrisk.config import ServingConfig
    from clinrisk.errors import DataError
    from clinrisk.serving.predictor import ClinriskModel

    broken = tmp_path / "bundle"
    shutil.copytree(bundle_dir, broken)
    (broken / "serving_examples.json").write_text(
        json.dumps({"instances": instances[:1], "probabilities": [0.999]})
    )
    model = ClinriskModel("clinrisk", broken, ServingConfig())
    with pytest.raises(DataError, match="serving_examples"):
        model.load()
    assert model.ready is False


def test_calendar_trend_features_are_not_out_of_distribution(
    client: Any, instances: list[dict[str, Any]]
) -> None:
    """A patient seen 25 years later (older, longer history) leaves the training range of age and
    history_years by construction; that is not an anomaly and must not be flagged (or rejected)."""
    later = json.loads(json.dumps(instances[0]))
    later["birth_year"] -= 25
    later["entry_year"] -= 25
    r = client.post(PREDICT, json={"instances": [later]})
    assert r.status_code == 200
    flagged = r.json()["predictions"][0]["ood_features"]
    assert not [f for f in flagged if f in ("age", "history_years") or f.endswith(("_years_since", "_ever"))]


def test_ood_reference_skips_calendar_trend_features(bundle_dir: Any) -> None:
    from clinrisk.bundle import load_bundle
    from clinrisk.features import FeatureSpec
    from clinrisk.serving.inference import ood_reference

    bundle = load_bundle(bundle_dir)
    spec = FeatureSpec.from_json(bundle_dir / "feature_spec.json")
    names = ood_reference(bundle, spec).names
    assert "age" in bundle.feature_names and "age" not in names
    assert not [n for n in names if n == "history_years" or n.endswith("_years_since")]
    assert any(n.startswith("hba1c") for n in names)
    bundle.config.setdefault("monitoring", {})["calendar_trend_features"] = ["hba1c*"]
    custom = ood_reference(bundle, spec).names
    assert "age" in custom and not [n for n in custom if n.startswith("hba1c")]
