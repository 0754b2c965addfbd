"""Canary rollout: state machine over recorded status documents, patch bodies validated against the CRD."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from clinrisk import k8s_validate as kv
from clinrisk import rollout as ro
from tests.k8s.conftest import FIXTURES, load_fixture

V1 = "s3://mlflow/1/aaa/artifacts/bundle"
V2 = "s3://mlflow/1/bbb/artifacts/bundle"
V3 = "s3://mlflow/1/ccc/artifacts/bundle"

EXPECTED_PHASE = {
    "first_deployment": ro.Phase.DEPLOYING,
    "stable": ro.Phase.STABLE,
    "canary_reconciling": ro.Phase.RECONCILING,
    "canary_in_progress": ro.Phase.CANARY,
    "canary_unready": ro.Phase.CANARY_UNREADY,
    "promoted": ro.Phase.STABLE,
    "rolled_back_canary": ro.Phase.ROLLED_BACK,
    "rollback_after_promote_updating": ro.Phase.UPDATING,
}


def _valid(obj: dict[str, Any], crds: Any) -> None:
    findings = kv.validate_object(obj, crds=crds, source="rollout")
    assert not findings, "\n".join(map(str, findings))


def test_every_fixture_is_classified_and_valid(crds: Any) -> None:
    names = sorted(p.stem for p in FIXTURES.glob("*.yaml"))
    assert names == sorted(EXPECTED_PHASE)
    for name in names:
        doc = load_fixture(name)
        _valid(doc, crds)  # recorded documents (status included) match the v0.20.0 CRD
        assert ro.read_state(doc).phase is EXPECTED_PHASE[name], name


def test_read_state_fields() -> None:
    state = ro.read_state(load_fixture("canary_in_progress"))
    assert state.model_uri == V2 and state.previous_model_uri == V1
    assert state.canary_percent == 10 and state.latest_percent == 10
    assert state.latest_rolledout == "clinrisk-predictor-00001"
    assert state.settled
    assert "Canary" in state.summary()
    unready = ro.read_state(load_fixture("canary_unready"))
    assert not unready.settled and "back-off" in unready.ready_message


def test_canary_from_stable_patch_and_result(crds: Any) -> None:
    doc = load_fixture("stable")
    patch = ro.plan_canary(doc, V2, 10)
    assert patch["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert patch["metadata"]["annotations"][ro.ANNOTATION_PREVIOUS_URI] == V1
    assert patch["metadata"]["resourceVersion"] == "1000"
    result = ro.apply_merge_patch(doc, patch)
    _valid(result, crds)
    assert ro.model_uri_of(result) == V2
    # other env vars and container fields survive the wholesale list replacement
    container = result["spec"]["predictor"]["containers"][0]
    assert {"name": "LOG_LEVEL", "value": "INFO"} in container["env"]
    assert container["readinessProbe"] == doc["spec"]["predictor"]["containers"][0]["readinessProbe"]
    assert not kv.semantic_checks([result])


def test_shift_running_canary() -> None:
    doc = load_fixture("canary_in_progress")
    patch = ro.plan_canary(doc, None, 50)
    assert patch["spec"] == {"predictor": {"canaryTrafficPercent": 50}}
    assert ro.plan_canary(doc, V2, 50)["spec"] == patch["spec"]  # same URI is a shift too
    with pytest.raises(ro.RolloutError, match="in progress"):
        ro.plan_canary(doc, V3, 50)


@pytest.mark.parametrize("bad", [-1, 101, 10.5, "10", True])
def test_percent_out_of_range(bad: Any) -> None:
    with pytest.raises(ro.RolloutError, match="canary percent"):
        ro.plan_canary(load_fixture("stable"), V2, bad)


def test_canary_needs_new_valid_uri() -> None:
    doc = load_fixture("stable")
    with pytest.raises(ro.RolloutError, match="model URI: missing"):
        ro.plan_canary(doc, None, 10)
    with pytest.raises(ro.RolloutError, match="unsupported scheme"):
        ro.plan_canary(doc, "/local/bundle", 10)
    with pytest.raises(ro.RolloutError, match="already serves"):
        ro.plan_canary(doc, V1, 10)


@pytest.mark.parametrize(
    "name", ["first_deployment", "canary_reconciling", "canary_unready", "rollback_after_promote_updating"]
)
def test_unsettled_refuses_canary_and_promote(name: str) -> None:
    doc = load_fixture(name)
    with pytest.raises(ro.UnsettledError, match="unsettled"):
        ro.plan_canary(doc, V3, 10)
    with pytest.raises(ro.UnsettledError):
        ro.plan_promote(doc)


def test_promote(crds: Any) -> None:
    doc = load_fixture("canary_in_progress")
    patch = ro.plan_promote(doc)
    result = ro.apply_merge_patch(doc, patch)
    assert "canaryTrafficPercent" not in result["spec"]["predictor"]
    assert ro.model_uri_of(result) == V2
    _valid(result, crds)
    with pytest.raises(ro.RolloutError, match="no canary to promote"):
        ro.plan_promote(load_fixture("stable"))


def test_rollback_during_canary_restores_uri_and_traffic(crds: Any) -> None:
    for name in ("canary_in_progress", "canary_unready"):  # an unready canary is exactly when you roll back
        doc = load_fixture(name)
        result = ro.apply_merge_patch(doc, ro.plan_rollback(doc))
        _valid(result, crds)
        assert result["spec"]["predictor"]["canaryTrafficPercent"] == 0
        assert ro.model_uri_of(result) == V1
        ann = result["metadata"]["annotations"]
        assert ann[ro.ANNOTATION_MODEL_URI] == V1 and ann[ro.ANNOTATION_ROLLED_BACK_URI] == V2
        assert ro.ANNOTATION_PREVIOUS_URI not in ann


def test_rollback_after_promote(crds: Any) -> None:
    doc = load_fixture("promoted")
    result = ro.apply_merge_patch(doc, ro.plan_rollback(doc))
    _valid(result, crds)
    assert "canaryTrafficPercent" not in result["spec"]["predictor"]  # full rollout of the old model
    assert ro.model_uri_of(result) == V1
    # the recorded document after that rollback settles is Stable on the old URI again
    after = load_fixture("rollback_after_promote_updating")
    after["status"]["conditions"] = load_fixture("stable")["status"]["conditions"]
    after["status"]["components"]["predictor"]["latestReadyRevision"] = "clinrisk-predictor-00003"
    state = ro.read_state(after)
    assert state.phase is ro.Phase.STABLE and state.model_uri == V1


def test_rollback_refusals() -> None:
    with pytest.raises(ro.RolloutError, match="no previous model URI"):
        ro.plan_rollback(load_fixture("stable"))
    with pytest.raises(ro.RolloutError, match="already rolled back"):
        ro.plan_rollback(load_fixture("rolled_back_canary"))
    with pytest.raises(ro.UnsettledError, match="observed"):
        ro.plan_rollback(load_fixture("canary_reconciling"))
    with pytest.raises(ro.RolloutError, match="first deployment"):
        ro.plan_rollback(load_fixture("first_deployment"))


def test_promote_after_rollback_finalises_and_new_canary_allowed(crds: Any) -> None:
    doc = load_fixture("rolled_back_canary")
    _valid(ro.apply_merge_patch(doc, ro.plan_promote(doc)), crds)
    result = ro.apply_merge_patch(doc, ro.plan_canary(doc, V3, 20))
    _valid(result, crds)
    assert ro.model_uri_of(result) == V3
    assert result["metadata"]["annotations"][ro.ANNOTATION_PREVIOUS_URI] == V1
    assert ro.ANNOTATION_ROLLED_BACK_URI not in result["metadata"]["annotations"]


def test_missing_container_is_an_error() -> None:
    doc = load_fixture("stable")
    doc["spec"]["predictor"]["containers"][0]["name"] = "predictor"
    with pytest.raises(ro.RolloutError, match="kserve-container"):
        ro.plan_canary(doc, V2, 10)


def test_merge_patch_rfc7386() -> None:
    assert ro.apply_merge_patch(
        {"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"b": None, "d": 3}, "l": [3]}
    ) == {
        "a": {"c": 2, "d": 3},
        "l": [3],
    }


def test_gate() -> None:
    bounds = ro.GateBounds(max_error_rate=0.01, max_p95_latency_s=0.5, min_requests=50)
    assert ro.evaluate_gate(ro.CanaryMetrics(1000, 0.001, 0.12), bounds) == []
    problems = ro.evaluate_gate(ro.CanaryMetrics(1000, 0.05, 0.9), bounds)
    assert len(problems) == 2 and "error rate" in problems[0]
    assert ro.evaluate_gate(ro.CanaryMetrics(10, float("nan"), float("nan")), bounds)[0].startswith("only 10")
    q = ro.prometheus_queries("clinrisk-predictor-00002", "clinrisk")
    assert all('pod=~"clinrisk-predictor-00002-deployment-.*"' in v for v in q.values())


def test_gate_queries_only_series_the_serving_image_exports() -> None:
    """Blocker 6: the gate queried Knative's removed `revision_request_*` series. Every metric it now
    queries must be one the real predictor process exposes on /metrics (clinrisk + KServe collectors)."""
    import re

    import prometheus_client
    from kserve import metrics as kserve_metrics  # noqa: F401  (registers request_predict_seconds)

    from clinrisk.serving.metrics import serving_metrics

    serving_metrics()
    exposed = prometheus_client.generate_latest().decode()
    exposed_names = {
        line.split("{")[0].split(" ")[0] for line in exposed.splitlines() if line and line[0] != "#"
    }
    exposed_names |= set(re.findall(r"^# TYPE (\S+) (?:counter|histogram)", exposed, re.M))
    families = {n + s for n in exposed_names for s in ("", "_total", "_bucket")}
    q = ro.prometheus_queries("clinrisk-predictor-00002", "clinrisk")
    used = {m for v in q.values() for m in re.findall(r"([a-z_:]+)\{", v)}
    assert used == {ro.REQUESTS_METRIC, ro.LATENCY_METRIC}
    assert used <= families, sorted(used - families)
    assert not any("revision_request" in v for v in q.values())


def test_gate_without_series_says_scrape_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    def empty(url: str, params: dict[str, str], timeout: float) -> httpx.Response:
        return httpx.Response(
            200, json={"status": "success", "data": {"result": []}}, request=httpx.Request("GET", url)
        )

    monkeypatch.setattr(httpx, "get", empty)
    with pytest.raises(ro.RolloutError, match=r"no clinrisk_requests_total series .* scraping"):
        ro.query_canary_metrics("http://127.0.0.1:9", "clinrisk-predictor-00002", "clinrisk")


def _settle(
    doc: dict[str, Any], patch: dict[str, Any], traffic: list[tuple[str, int, bool]]
) -> dict[str, Any]:
    """What the controllers would report after ``patch``: generation observed, Ready, the given split."""
    after = ro.apply_merge_patch(doc, patch)
    after["metadata"].pop("resourceVersion", None)
    after["metadata"]["generation"] = doc["metadata"]["generation"] + 1
    after["status"]["observedGeneration"] = after["metadata"]["generation"]
    pred = after["status"]["components"]["predictor"]
    pred["latestCreatedRevision"] = pred["latestReadyRevision"] = traffic[-1][0]
    pred["traffic"] = [
        {"revisionName": r, "percent": p, "latestRevision": latest} for r, p, latest in traffic
    ]
    return after


def test_canary_at_zero_percent_is_a_canary_not_a_rollback(crds: Any) -> None:
    """Blocker 5: `canary --percent 0` was classed RolledBack, rollback was refused and promote sent 100 %
    to a model that never took traffic."""
    stable = load_fixture("stable")
    patch = ro.plan_canary(stable, V2, 0)
    dark = _settle(
        stable, patch, [("clinrisk-predictor-00001", 100, False), ("clinrisk-predictor-00002", 0, True)]
    )
    _valid(dark, crds)
    state = ro.read_state(dark)
    assert state.phase is ro.Phase.CANARY and state.canary_percent == 0
    with pytest.raises(ro.RolloutError, match="at 0 % and has taken no traffic"):
        ro.plan_promote(dark)
    shifted = ro.plan_canary(dark, None, 10)  # the dark canary can be shifted ...
    assert shifted["spec"]["predictor"]["canaryTrafficPercent"] == 10
    back = ro.plan_rollback(dark)  # ... or rolled back
    assert back["spec"]["predictor"]["canaryTrafficPercent"] == 0
    rolled = _settle(
        dark, back, [("clinrisk-predictor-00001", 100, False), ("clinrisk-predictor-00003", 0, True)]
    )
    assert ro.read_state(rolled).phase is ro.Phase.ROLLED_BACK


# ----------------------------------------------------------------------------- thin client layer


class RecordingApi:
    """Fake API for the client layer only: replays a sequence of documents, records patches."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs
        self.patches: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        if not self.docs:
            raise ro.NotFoundError(f"InferenceService {namespace}/{name}: not found")
        self.last = copy.deepcopy(self.docs[0] if len(self.docs) == 1 else self.docs.pop(0))
        return copy.deepcopy(self.last)

    def patch(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        self.patches.append(copy.deepcopy(dict(body)))
        result = ro.apply_merge_patch(self.last, body)
        result["metadata"]["generation"] += 1
        return result


def test_rollout_canary_waits_until_settled() -> None:
    stable, reconciling, canary = (
        load_fixture("stable"),
        load_fixture("canary_reconciling"),
        load_fixture("canary_in_progress"),
    )
    api = RecordingApi([stable, reconciling, canary])
    sleeps: list[float] = []
    ticks = iter(range(100))
    r = ro.Rollout(api, poll_s=1, sleep=sleeps.append, clock=lambda: float(next(ticks)))
    state = r.canary(V2, 10, timeout_s=60)
    assert state.phase is ro.Phase.CANARY and len(api.patches) == 1 and sleeps == [1]


def test_rollout_times_out_and_not_found() -> None:
    ticks = iter(range(100))
    r = ro.Rollout(
        RecordingApi([load_fixture("canary_unready")]),
        poll_s=1,
        sleep=lambda s: None,
        clock=lambda: float(next(ticks)),
    )
    with pytest.raises(ro.UnsettledError, match="timed out"):
        r.wait_settled(timeout_s=3)
    with pytest.raises(ro.NotFoundError, match="not found"):
        ro.Rollout(RecordingApi([])).status()


def test_rollout_gate_blocks_promote() -> None:
    api = RecordingApi([load_fixture("canary_in_progress")])
    r = ro.Rollout(api, sleep=lambda s: None)
    with pytest.raises(ro.RolloutError, match="gate failed"):
        r.promote(gate=lambda state: ["error rate 0.2 > 0.01"])
    assert api.patches == []


def test_kubernetes_client_maps_errors() -> None:
    from kubernetes.client.exceptions import ApiException

    class Custom:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        def get_namespaced_custom_object(self, *args: Any) -> Any:
            self.calls.append(("get", *args))
            raise ApiException(status=404, reason="Not Found")

        def patch_namespaced_custom_object(self, *args: Any) -> Any:
            self.calls.append(("patch", *args))
            raise ApiException(status=409, reason="Conflict")

    custom = Custom()
    api = ro.KubernetesIsvcApi(custom_api=custom)
    with pytest.raises(ro.NotFoundError, match="clinrisk/nope"):
        api.get("clinrisk", "nope")
    with pytest.raises(ro.UnsettledError, match="409"):
        api.patch("clinrisk", "clinrisk", {"spec": {}})
    assert custom.calls[0] == ("get", "serving.kserve.io", "v1beta1", "clinrisk", "inferenceservices", "nope")


def test_deploy_step_passes_storage_uri_and_refuses_unservable(tmp_path: Any) -> None:
    from clinrisk.config import load_config, save_config
    from clinrisk.steps import CONFIG_FILE, deploy_canary_step

    save_config(load_config(None), tmp_path / CONFIG_FILE)
    api = RecordingApi([load_fixture("stable"), load_fixture("canary_in_progress")])
    deploy_canary_step(tmp_path, V2, "clinrisk", "clinrisk", 10, api=api)
    (patch,) = api.patches
    assert V2 in str(patch)
    # A local path (register without MLflow) cannot be fetched by KServe's storage initializer.
    with pytest.raises(ro.RolloutError, match="unsupported scheme"):
        deploy_canary_step(
            tmp_path, "/tmp/bundle", "clinrisk", "clinrisk", 10, api=RecordingApi([load_fixture("stable")])
        )
