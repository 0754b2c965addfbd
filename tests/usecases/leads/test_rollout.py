"""The canary rollout state machine driven with the lead-conversion use case's names.

The recorded InferenceService documents of ``tests/k8s/fixtures`` are re-addressed to the ``leads``
namespace/service/model (every ``clinrisk`` name in them), and the shared ``clinrisk.rollout`` steps run
against them through ``Rollout(namespace=…, name=…)`` from ``USECASE.names``: canary -> shift -> promote ->
canary -> rollback, with every request checked to go to ``leads/leads`` and every result valid against the
KServe CRD.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from clinrisk import k8s_validate as kv
from clinrisk import rollout as ro
from clinrisk.usecases import get
from tests.k8s.conftest import FIXTURES

NAMES = get("leads").names
V1 = "s3://mlflow/7/aaa/artifacts/bundle"
V2 = "s3://mlflow/7/bbb/artifacts/bundle"
V3 = "s3://mlflow/7/ccc/artifacts/bundle"


def leads_fixture(name: str) -> dict[str, Any]:
    text = (FIXTURES / f"{name}.yaml").read_text()
    text = text.replace("mlflow/1/", "mlflow/7/").replace("clinrisk.io/", "KEEP.io/")
    text = text.replace("clinrisk", NAMES.model_name).replace("KEEP.io/", "clinrisk.io/")
    doc = yaml.safe_load(text)
    assert doc["metadata"]["namespace"] == NAMES.namespace and doc["metadata"]["name"] == NAMES.model_name
    return doc


class LeadsApi:
    """Replays recorded documents; checks every call addresses the leads InferenceService."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs
        self.patches: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}

    def _check(self, namespace: str, name: str) -> None:
        assert (namespace, name) == (NAMES.namespace, NAMES.model_name)

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        self._check(namespace, name)
        self.last = copy.deepcopy(self.docs[0] if len(self.docs) == 1 else self.docs.pop(0))
        return copy.deepcopy(self.last)

    def patch(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        self._check(namespace, name)
        self.patches.append(copy.deepcopy(dict(body)))
        result = ro.apply_merge_patch(self.last, body)
        result["metadata"]["generation"] += 1
        return result


@pytest.fixture(scope="module")
def crds() -> Any:
    from tests.k8s.conftest import REPO

    return kv.load_crd_schemas(kv.crd_dir(REPO))


def _rollout(api: LeadsApi) -> ro.Rollout:
    ticks = iter(range(1000))
    return ro.Rollout(
        api,
        namespace=NAMES.namespace,
        name=NAMES.model_name,
        poll_s=1,
        sleep=lambda s: None,
        clock=lambda: float(next(ticks)),
    )


def test_canary_promote_rollback_on_the_leads_service(crds: Any) -> None:
    stable = leads_fixture("stable")
    assert not kv.validate_object(stable, crds=crds, source="leads")
    assert ro.read_state(stable).model_uri == V1

    api = LeadsApi([stable, leads_fixture("canary_reconciling"), leads_fixture("canary_in_progress")])
    state = _rollout(api).canary(V2, 10, timeout_s=60)
    assert state.phase is ro.Phase.CANARY and state.latest_rolledout == f"{NAMES.model_name}-predictor-00001"
    (patch,) = api.patches
    assert patch["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert patch["metadata"]["annotations"][ro.ANNOTATION_PREVIOUS_URI] == V1
    result = ro.apply_merge_patch(stable, patch)
    assert not kv.validate_object(result, crds=crds, source="leads")
    assert ro.model_uri_of(result) == V2

    # shift, then promote: every patch goes to leads/leads and keeps the document CRD-valid
    canary = leads_fixture("canary_in_progress")
    shift = ro.plan_canary(canary, None, 50)
    assert shift["spec"] == {"predictor": {"canaryTrafficPercent": 50}}
    api = LeadsApi([canary, leads_fixture("promoted")])
    assert _rollout(api).promote(timeout_s=60).phase is ro.Phase.STABLE
    assert not kv.validate_object(ro.apply_merge_patch(canary, api.patches[0]), crds=crds, source="leads")

    # a canary in progress cannot be replaced; rollback restores the previous URI at once
    with pytest.raises(ro.RolloutError, match="in progress"):
        ro.plan_canary(canary, V3, 10)
    api = LeadsApi([canary, leads_fixture("rolled_back_canary")])
    assert _rollout(api).rollback(timeout_s=60).phase is ro.Phase.ROLLED_BACK
    assert ro.model_uri_of(ro.apply_merge_patch(canary, api.patches[0])) == V1


def test_unsettled_leads_service_refuses_and_gate_blocks() -> None:
    with pytest.raises(ro.UnsettledError, match="unsettled"):
        ro.plan_canary(leads_fixture("canary_unready"), V3, 10)
    api = LeadsApi([leads_fixture("canary_in_progress")])
    with pytest.raises(ro.RolloutError, match=f"{NAMES.namespace}/{NAMES.model_name}: promotion gate failed"):
        _rollout(api).promote(gate=lambda state: ["error rate 0.2 > 0.01"])
    assert api.patches == []
