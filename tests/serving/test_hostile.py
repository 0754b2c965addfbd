"""Hostile and unlucky requests against the in-process app (the same app `clinrisk serve` runs): oversized
and chunked bodies, wrong methods, V2 and repository routes, explain, tokens, unit mistakes, short
histories. The real-socket attacks (300 MB bodies, slow bodies, probe latency, RSS) are in
test_attack_live.py."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

PREDICT = "/v1/models/clinrisk:predict"
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def client(make_client: Callable[..., Any]) -> Any:
    return make_client(max_body_bytes=64 * 1024)


def _metric(client: Any, prefix: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_declared_oversized_body_is_413_before_reading(client: Any) -> None:
    before = _metric(client, 'clinrisk_rejected_inputs_total{model_name="clinrisk",reason="body_too_large"}')
    r = client.post(PREDICT, content=b"x" * (64 * 1024 + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["error"]
    assert r.headers["connection"] == "close"
    after = _metric(client, 'clinrisk_rejected_inputs_total{model_name="clinrisk",reason="body_too_large"}')
    assert after == before + 1


def test_chunked_body_growing_past_the_limit_is_413(client: Any) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"instances": ['
        for _ in range(200):
            yield b" " * 1024

    r = client.post(PREDICT, content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 413 and r.json() == {"error": "request body too large (limit 65536 bytes)"}


def test_bad_content_length_is_400(client: Any) -> None:
    r = client.post(
        PREDICT, content=b"{}", headers={"content-type": "application/json", "content-length": "-5"}
    )
    assert r.status_code == 400


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("verb", [":predict", ":explain"])
def test_wrong_method_is_405(client: Any, method: str, verb: str) -> None:
    r = client.request(method, f"/v1/models/clinrisk{verb}")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "error" in r.json()


def test_explain_is_501_without_traceback(
    client: Any, instances: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        r = client.post("/v1/models/clinrisk:explain", json={"instances": instances[:1]})
    assert r.status_code == 501 and "reason_codes_top_k" in r.json()["error"]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info]


def test_v2_inference_is_off_and_does_not_echo_the_record(
    client: Any, instances: list[dict[str, Any]]
) -> None:
    inst = copy.deepcopy(instances[0])
    inst["ethnicity"] = "MARKER-7f3a"
    r = client.post("/v2/models/clinrisk/infer", json={"instances": [inst]})
    assert r.status_code == 404 and set(r.json()) == {"error"}
    assert "MARKER-7f3a" not in r.text and "history" not in r.text


def test_repository_routes_are_off_and_readiness_follows_the_model(client: Any) -> None:
    for action in ("unload", "load"):
        r = client.post(f"/v2/repository/models/clinrisk/{action}")
        assert r.status_code == 404 and set(r.json()) == {"error"}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v1/models/clinrisk").json() == {"name": "clinrisk", "ready": True}
    assert client.get("/v2/models/clinrisk/ready").status_code == 200
    assert client.get("/v2/health/live").status_code == 200


def test_readiness_is_503_while_the_model_is_not_loaded(make_client: Callable[..., Any]) -> None:
    c = make_client(load=False)
    assert c.get("/v2/health/ready").status_code == 503
    assert c.get("/v1/models/clinrisk").status_code == 503
    assert c.get("/").status_code == 200  # liveness does not depend on the model


def test_unknown_route_answers_in_the_error_format(client: Any) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and set(r.json()) == {"error"}


# ------------------------------------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def auth_client(make_client: Callable[..., Any]) -> Any:
    return make_client(token=TOKEN.encode())


@pytest.mark.parametrize(
    ("header", "reason"),
    [(None, "missing_token"), ("Bearer wrong", "wrong_token"), (f"Basic {TOKEN}", "malformed_token")],
)
def test_bad_token_is_401_and_counted(
    auth_client: Any, instances: list[dict[str, Any]], header: str | None, reason: str
) -> None:
    key = f'clinrisk_auth_failures_total{{model_name="clinrisk",reason="{reason}"}}'
    before = _metric(auth_client, key)
    headers = {"authorization": header} if header else {}
    r = auth_client.post(PREDICT, json={"instances": instances[:1]}, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert _metric(auth_client, key) == before + 1


def test_right_token_is_served_and_probes_need_none(
    auth_client: Any, instances: list[dict[str, Any]]
) -> None:
    r = auth_client.post(
        PREDICT, json={"instances": instances[:1]}, headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert r.status_code == 200, r.text
    for path in ("/", "/v2/health/live", "/v2/health/ready", "/v1/models/clinrisk", "/metrics"):
        assert auth_client.get(path).status_code == 200, path
    # Everything else needs the token, unknown routes and the model list included.
    assert auth_client.get("/v1/models").status_code == 401
    assert auth_client.post("/v2/repository/models/clinrisk/unload").status_code == 401


def test_token_file_and_require_auth(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from clinrisk.config import ServingConfig
    from clinrisk.errors import DataError
    from clinrisk.serving.app import load_token

    monkeypatch.delenv("CLINRISK_SERVING_TOKEN", raising=False)
    assert load_token(ServingConfig()) is None
    with pytest.raises(DataError, match="require_auth"):
        load_token(ServingConfig(require_auth=True))
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert load_token(ServingConfig(auth_token_file=str(f), require_auth=True)) == TOKEN.encode()
    f.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_token(ServingConfig(auth_token_file=str(f)))
    monkeypatch.setenv("CLINRISK_SERVING_TOKEN", "from-env")
    assert load_token(ServingConfig()) == b"from-env"


# ----------------------------------------------------------------------------------------- warnings


def _unit_mistakes(instance: dict[str, Any]) -> dict[str, Any]:
    inst = copy.deepcopy(instance)
    last = inst["history"][-1]
    last.update(
        hba1c_value=5.6, hba1c_unit="mmol/mol", glucose_value=110.0, glucose_unit="mmol/L",
        height_value=180.0, height_unit="cm", weight_value=80.0, weight_unit="lb",
    )  # fmt: skip
    return inst


def test_dropped_values_are_warned_and_counted(client: Any, instance: dict[str, Any]) -> None:
    key = 'clinrisk_value_warnings_total{field="hba1c_value",model_name="clinrisk",reason="implausible_for_unit"}'
    inst = _unit_mistakes(instance)
    j = len(inst["history"]) - 1
    before = _metric(client, key)
    r = client.post(PREDICT, json={"instances": [instance, inst]})
    assert r.status_code == 200, r.text
    clean, warned = r.json()["predictions"]
    got = {(w["field"], w["reason"]) for w in warned["warnings"]}
    assert {
        (f"history[{j}].hba1c_value", "implausible_for_unit"),
        (f"history[{j}].glucose_value", "implausible_for_unit"),
        (f"history[{j}].weight_value", "implausible_bmi_for_unit"),
    } <= got
    w = next(w for w in warned["warnings"] if w["field"].endswith("hba1c_value"))
    assert w["value"] == 5.6 and w["unit"] == "mmol/mol"
    assert not any(w["field"].startswith(f"history[{j}].") for w in clean["warnings"])
    assert _metric(client, key) == before + 1


def test_unit_inferred_value_is_warned(client: Any, instance: dict[str, Any]) -> None:
    inst = copy.deepcopy(instance)
    inst["history"][-1].update(glucose_value=6.1, glucose_unit=None)
    r = client.post(PREDICT, json={"instances": [inst]})
    ws = [w for w in r.json()["predictions"][0]["warnings"] if w["field"].endswith("glucose_value")]
    assert ws and ws[-1]["reason"] == "unit_inferred" and ws[-1]["inferred_unit"] == "mmol/L"


def test_warnings_become_422_when_configured(
    make_client: Callable[..., Any], instance: dict[str, Any]
) -> None:
    c = make_client(reject_value_warnings=True)
    r = c.post(PREDICT, json={"instances": [instance, _unit_mistakes(instance)]})
    assert r.status_code == 422
    msg = r.json()["error"]
    assert msg.startswith("instances[1]:") and "implausible_for_unit" in msg and "5.6" not in msg


# ------------------------------------------------------------------------------------------ history


def test_history_must_reach_the_window_start(client: Any, instance: dict[str, Any]) -> None:
    inst = copy.deepcopy(instance)
    inst["entry_year"] = min(inst["entry_year"], inst["history"][0]["year"])
    inst["history"] = inst["history"][-2:]
    r = client.post(PREDICT, json={"instances": [inst]})
    assert r.status_code == 400 and "history" in r.json()["error"] and "too short" in r.json()["error"]
    # A patient who entered in the year before the current one needs only those two records.
    inst["entry_year"] = inst["history"][0]["year"]
    r = client.post(PREDICT, json={"instances": [inst]})
    assert r.status_code == 200, r.text


def test_warning_fast_path_agrees_with_the_exact_unit_rules(
    instances: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    from clinrisk.serving import value_warnings
    from clinrisk.serving.request import validate_request

    rng = random.Random(5)
    batch = copy.deepcopy(instances)
    for inst in batch:  # unit mistakes, missing units, boundary values
        for rec in inst["history"]:
            if rng.random() < 0.3 and rec.get("glucose_value") is not None:
                rec["glucose_unit"] = rng.choice(["mg/dL", "mmol/L", None])
            if rng.random() < 0.3 and rec.get("weight_value") is not None:
                rec["weight_unit"] = rng.choice(["kg", "lb", None])
            if rng.random() < 0.2:
                rec["hba1c_value"], rec["hba1c_unit"] = rng.choice(
                    [(3.5, "%"), (18.0, "%"), (15.0, "mmol/mol")]
                )
    body = {"instances": batch}
    fast = validate_request(body, window_years=3, max_instances=256, max_history_years=40).warnings
    monkeypatch.setattr(value_warnings, "_surely_kept", lambda *a: False)
    exact = validate_request(body, window_years=3, max_instances=256, max_history_years=40).warnings
    assert fast == exact and any(fast)
