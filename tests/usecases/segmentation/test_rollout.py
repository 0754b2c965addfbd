"""The canary rollout of the segmentation predictor: its InferenceService document (CRD-valid, the platform's
semantic checks) driven through the shared ``clinrisk.rollout`` state machine, canary -> shift -> promote ->
canary -> rollback, as the leads use case's rollout is tested.

The spec is the document ``clinrisk segmentation manifest`` prints, changed only by the real merge patches
the rollout sends; the status is replayed from the recorded KServe documents of ``tests/k8s/fixtures``,
re-addressed to the segmentation service (its revisions, its URL)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinrisk import k8s_validate as kv
from clinrisk import rollout as ro
from clinrisk.config import load_config
from clinrisk.usecases.segmentation.deploy import inference_service
from tests.k8s.conftest import FIXTURES, REPO
from tests.usecases.segmentation.conftest import TINY

V1 = "s3://mlflow/9/aaa/artifacts/segmentation"
V2 = "s3://mlflow/9/bbb/artifacts/segmentation"
V3 = "s3://mlflow/9/ccc/artifacts/segmentation"


@pytest.fixture(scope="module")
def crds() -> Any:
    return kv.load_crd_schemas(kv.crd_dir(REPO))


def _cfg(tmp: Path) -> Any:
    return load_config(TINY, [f"run.output_dir={tmp}"])


def recorded_status(name: str, service: str, namespace: str) -> tuple[dict[str, Any], bool]:
    """(status, reconciling) of a recorded document, with every clinrisk name made the service's."""
    text = (FIXTURES / f"{name}.yaml").read_text().replace("clinrisk.io/", "KEEP.io/")
    text = text.replace("clinrisk-predictor", f"{service}-predictor")
    text = text.replace("clinrisk.clinrisk", f"{service}.{namespace}").replace("KEEP.io/", "clinrisk.io/")
    doc = yaml.safe_load(text)
    return doc["status"], doc["status"]["observedGeneration"] < doc["metadata"]["generation"]


class SimulatedService:
    """A segmentation InferenceService: the spec the rollout patches, the status KServe would report
    (one recorded status per read, the last one repeated). Checks every call addresses it."""

    def __init__(self, doc: dict[str, Any], statuses: list[str]) -> None:
        self.doc = copy.deepcopy(doc)
        self.doc["metadata"].update(generation=1, resourceVersion="1000")
        self.name, self.namespace = doc["metadata"]["name"], doc["metadata"]["namespace"]
        self.statuses = list(statuses)
        self.patches: list[dict[str, Any]] = []

    def then(self, *statuses: str) -> SimulatedService:
        self.statuses = list(statuses)
        return self

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        assert (namespace, name) == (self.namespace, self.name)
        step = self.statuses[0] if len(self.statuses) == 1 else self.statuses.pop(0)
        status, reconciling = recorded_status(step, self.name, self.namespace)
        generation = self.doc["metadata"]["generation"]
        status["observedGeneration"] = generation - 1 if reconciling else generation
        self.doc["status"] = status
        return copy.deepcopy(self.doc)

    def patch(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        assert (namespace, name) == (self.namespace, self.name)
        assert body["metadata"].get("resourceVersion") in (None, self.doc["metadata"]["resourceVersion"])
        self.patches.append(copy.deepcopy(dict(body)))
        self.doc = ro.apply_merge_patch(self.doc, body)
        self.doc["metadata"]["generation"] += 1
        self.doc["metadata"]["resourceVersion"] = str(int(self.doc["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.doc)


def _rollout(api: SimulatedService) -> ro.Rollout:
    ticks = iter(range(10_000))
    return ro.Rollout(
        api,
        namespace=api.namespace,
        name=api.name,
        poll_s=1,
        sleep=lambda s: None,
        clock=lambda: float(next(ticks)),
    )


def test_the_manifest_is_valid_and_named_for_segmentation(tmp_path: Path, crds: Any) -> None:
    doc = inference_service(_cfg(tmp_path), V1, image="clinrisk/segmentation-serving:0.1.0")
    assert not kv.validate_object(doc, crds=crds, source="segmentation")
    assert not kv.semantic_checks([doc])
    assert (doc["metadata"]["namespace"], doc["metadata"]["name"]) == ("segmentation", "segmentation")
    (container,) = doc["spec"]["predictor"]["containers"]
    assert container["command"] == ["clinrisk", "segmentation", "serve"]
    assert container["args"][:2] == ["--ckpt", "/mnt/models/best.npz"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/segmentation"
    assert ro.model_uri_of(doc) == V1 and doc["metadata"]["annotations"][ro.ANNOTATION_MODEL_URI] == V1
    with pytest.raises(ro.RolloutError, match="scheme"):
        inference_service(_cfg(tmp_path), "models:/segmentation/1")  # KServe cannot download models:/


def test_canary_shift_promote_then_rollback_on_the_segmentation_service(tmp_path: Path, crds: Any) -> None:
    base = inference_service(_cfg(tmp_path), V1, image="clinrisk/segmentation-serving:0.1.0")
    api = SimulatedService(base, ["stable"])
    assert _rollout(api).status().phase is ro.Phase.STABLE

    api.then("stable", "canary_reconciling", "canary_in_progress")
    state = _rollout(api).canary(V2, 10, timeout_s=60)
    assert state.phase is ro.Phase.CANARY and state.model_uri == V2 and state.previous_model_uri == V1
    assert state.latest_rolledout == "segmentation-predictor-00001"
    assert not kv.validate_object(api.doc, crds=crds, source="segmentation")
    assert not kv.semantic_checks([api.doc])
    (container,) = api.doc["spec"]["predictor"]["containers"]
    # the wholesale container-list replacement keeps the segmentation command, probes and secret env
    assert container["command"] == base["spec"]["predictor"]["containers"][0]["command"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/segmentation"
    assert any(e["name"] == "CLINRISK_SERVING_TOKEN" for e in container["env"])

    api.then("canary_in_progress")
    assert _rollout(api).canary(None, 50, timeout_s=60).canary_percent == 50  # shift
    with pytest.raises(ro.RolloutError, match="in progress"):
        _rollout(api).canary(V3, 10, timeout_s=60)
    with pytest.raises(ro.RolloutError, match="segmentation/segmentation: promotion gate failed"):
        _rollout(api).promote(gate=lambda s: ["error rate 0.2 > 0.01"])

    api.then("canary_in_progress", "promoted")
    state = _rollout(api).promote(timeout_s=60)
    assert state.phase is ro.Phase.STABLE and state.model_uri == V2
    assert "canaryTrafficPercent" not in api.doc["spec"]["predictor"]

    api.then("stable", "canary_in_progress")
    _rollout(api).canary(V3, 10, timeout_s=60)
    api.then("canary_in_progress", "rolled_back_canary")
    state = _rollout(api).rollback(timeout_s=60)
    assert state.phase is ro.Phase.ROLLED_BACK and ro.model_uri_of(api.doc) == V2
    assert not kv.validate_object(api.doc, crds=crds, source="segmentation")
    assert len(api.patches) == 5


def test_an_unsettled_service_refuses_and_a_timeout_is_unsettled(tmp_path: Path) -> None:
    base = inference_service(_cfg(tmp_path), V1)
    api = SimulatedService(base, ["canary_unready"])
    with pytest.raises(ro.UnsettledError, match="unsettled"):
        _rollout(api).canary(V2, 10)
    api = SimulatedService(base, ["stable", "canary_reconciling"])
    with pytest.raises(ro.UnsettledError, match="timed out"):
        _rollout(api).canary(V2, 10, timeout_s=5)
