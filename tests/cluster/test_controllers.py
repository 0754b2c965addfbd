"""The real KServe manager and Knative Serving controller/webhook/autoscaler against the local control plane
(tests/cluster/stack.py): the InferenceService is reconciled into a Knative Service, Revisions and a Route;
the predictor pods, with KServe's injected storage-initializer and Knative's queue-proxy, are admitted by the
real restricted PodSecurity plugin; `clinrisk rollout` drives canary 10 → 50 → promote, then a new canary →
rollback, and the assertions read the Route and Revisions the Knative controller wrote.

The rollout runs for each use case: ``clinical`` on the kind overlay as shipped, ``leads`` on the same overlay
re-addressed to the use case's names (namespace ``leads``, InferenceService ``leads``), driven by
``clinrisk --usecase leads rollout …`` with the ``leads`` namespace's own rollout ServiceAccount."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinrisk import k8s_validate as kv
from clinrisk.usecases import get
from tests.cluster.conftest import REPO, Cluster
from tests.cluster.stack import ServingStack, StackError

NS = "clinrisk"
KSVC = "clinrisk-predictor"
CLI = [str(Path(sys.executable).parent / "clinrisk")]


@pytest.fixture(scope="module")
def stack(
    cluster: Cluster, platform: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServingStack]:
    s = ServingStack(cluster, tmp_path_factory.mktemp("serving"))
    try:
        s.start(platform)
    except (StackError, AssertionError) as exc:
        s.stop()
        pytest.fail(str(exc), pytrace=False)
    yield s
    s.stop()


def _ready(obj: dict[str, Any]) -> bool:
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def _route_split(cluster: Cluster, ns: str = NS, ksvc: str = KSVC) -> dict[str, int]:
    route = cluster.get("route.serving.knative.dev", ksvc, "-n", ns)
    return {
        t["revisionName"]: int(t["percent"]) for t in route["status"].get("traffic", []) if t.get("percent")
    }


def _wait_isvc_ready(stack: ServingStack, ns: str, name: str) -> str:
    """The InferenceService reconciled by the real controllers until Ready; its latest ready revision."""
    cluster = stack.cluster

    def isvc_ready() -> dict[str, Any] | None:
        isvc = cluster.get("inferenceservice", name, "-n", ns)
        return isvc if _ready(isvc) else None

    try:
        isvc = stack.wait(f"InferenceService {ns}/{name} Ready", isvc_ready, 420)
    except StackError as exc:
        isvc = cluster.get("inferenceservice", name, "-n", ns)
        pytest.fail(f"{exc}; status: {json.dumps(isvc.get('status'))[:1500]}", pytrace=False)
    return str(isvc["status"]["components"]["predictor"]["latestReadyRevision"])


@pytest.fixture(scope="module")
def first_revision(stack: ServingStack) -> str:
    """The overlay's InferenceService, reconciled by the real controllers until Ready."""
    return _wait_isvc_ready(stack, NS, "clinrisk")


@pytest.fixture(scope="module")
def leads_revision(stack: ServingStack, platform: dict[str, list[dict[str, Any]]]) -> str:
    """The leads use case's InferenceService (its kustomize overlay, manifests/overlays/leads-kind: the kind
    overlay plus the use case's component), reconciled until Ready."""
    names = get("leads").names
    cluster = stack.cluster
    objs = kv.render_kustomize(
        kv.Tools(cluster.helm_bin, cluster.kubectl_bin), REPO / "manifests" / "overlays" / "leads-kind"
    )
    assert any(o["kind"] == "InferenceService" and o["metadata"]["name"] == names.model_name for o in objs)
    refused = cluster.apply_objects(objs, "manifests/overlays/leads-kind")
    assert not refused, "refused by the API server:\n" + "\n".join(refused)
    return _wait_isvc_ready(stack, names.namespace, names.model_name)


def test_isvc_becomes_knative_service_revision_and_route(stack: ServingStack, first_revision: str) -> None:
    cluster = stack.cluster
    ksvc = cluster.get("service.serving.knative.dev", KSVC, "-n", NS)
    assert _ready(ksvc)
    rev = cluster.get("revision.serving.knative.dev", first_revision, "-n", NS)
    assert _ready(rev)
    assert _route_split(cluster) == {first_revision: 100}
    # Blocker 4: no Istio VirtualService; the InferenceService URL is the predictor's Knative host.
    isvc = cluster.get("inferenceservice", "clinrisk", "-n", NS)
    assert isvc["status"]["url"] == "http://clinrisk-predictor.clinrisk.example.com"
    assert ksvc["status"]["url"] == isvc["status"]["url"]


def test_predictor_pods_with_injected_containers_meet_restricted(
    stack: ServingStack, first_revision: str
) -> None:
    cluster = stack.cluster
    pods = cluster.get("pods", "-n", NS, "-l", f"serving.knative.dev/revision={first_revision}")["items"]
    assert pods, "no predictor pod was admitted"
    pod = pods[0]
    init = {c["name"]: c for c in pod["spec"].get("initContainers", [])}
    assert "storage-initializer" in init, "KServe's pod mutator did not inject the storage-initializer"
    assert init["storage-initializer"]["securityContext"]["allowPrivilegeEscalation"] is False
    assert init["storage-initializer"]["args"][0] == "s3://mlflow/models/clinrisk/current"
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert {"kserve-container", "queue-proxy"} <= set(containers)
    assert containers["queue-proxy"]["securityContext"]["capabilities"]["drop"] == ["ALL"]
    proc = cluster.kubectl(
        "label",
        "--dry-run=server",
        "--overwrite",
        "namespace",
        NS,
        "pod-security.kubernetes.io/enforce=restricted",
    )
    assert "violate" not in proc.stderr, proc.stderr


def test_knative_webhook_needs_the_securitycontext_flag(stack: ServingStack, first_revision: str) -> None:
    """Blocker 2, judged by the real Knative webhook: without the flag, the pod-level securityContext the
    InferenceService sets is refused; with the flag (this project's setting) it is admitted."""
    cluster = stack.cluster
    ksvc = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "flag-probe", "namespace": NS},
        "spec": {
            "template": {
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                    "containers": [{"image": "clinrisk/serving:0.1.0"}],
                }
            }
        },
    }
    body = yaml.safe_dump(ksvc)

    def set_flag(value: str) -> None:
        cluster.kubectl(
            "patch", "configmap", "config-features", "-n", "knative-serving", "--type", "merge",
            "-p", json.dumps({"data": {"kubernetes.podspec-securitycontext": value}}),
        )  # fmt: skip

    def dry_run() -> subprocess.CompletedProcess[str]:
        return cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=body, check=False)

    set_flag("disabled")
    try:
        refused = stack.wait(
            "the Knative webhook to see the flag off", lambda: (p := dry_run()).returncode != 0 and p, 60
        )
        assert "securityContext" in refused.stderr, refused.stderr
    finally:
        set_flag("enabled")
    admitted = stack.wait("the Knative webhook to see the flag on", lambda: dry_run().returncode == 0, 60)
    assert admitted


def _rollout(stack: ServingStack, *args: str, ns: str = NS, usecase: str | None = None) -> str:
    """`clinrisk [--usecase U] rollout …` as the namespace's clinrisk-rollout ServiceAccount (RBAC-limited)."""
    kc = stack.state / f"rollout-{ns}.kubeconfig"
    if not kc.exists():
        token = stack.cluster.kubectl("create", "token", "clinrisk-rollout", "-n", ns).stdout.strip()
        cfg = yaml.safe_load(stack.cluster.kubeconfig.read_text())
        cfg["users"] = [{"name": cfg["users"][0]["name"], "user": {"token": token}}]
        kc.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "KUBECONFIG": str(kc)}
    select = ["--usecase", usecase] if usecase else []
    proc = subprocess.run(
        [*CLI, *select, "rollout", *args, *(["--timeout", "420"] if args[0] != "status" else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    assert proc.returncode == 0, f"clinrisk rollout {' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout


def _wait_split(stack: ServingStack, want: dict[str, int], ns: str = NS, ksvc: str = KSVC) -> None:
    stack.wait(f"Route split {want}", lambda: _route_split(stack.cluster, ns, ksvc) == want, 120)


def _revisions(cluster: Cluster, ns: str = NS, ksvc: str = KSVC) -> list[str]:
    revs = cluster.get("revision.serving.knative.dev", "-n", ns, "-l", f"serving.knative.dev/service={ksvc}")
    return sorted(r["metadata"]["name"] for r in revs["items"])


@pytest.mark.parametrize("usecase", ["clinical", "leads"])
def test_canary_promote_then_canary_rollback(
    stack: ServingStack, request: pytest.FixtureRequest, usecase: str
) -> None:
    """The same state machine for each use case, against the real controllers."""
    cluster = stack.cluster
    names = get(usecase).names
    ns, name, ksvc = names.namespace, names.model_name, f"{names.model_name}-predictor"
    r1 = request.getfixturevalue("first_revision" if usecase == "clinical" else "leads_revision")
    # clinical: the CLI's default use case; leads: selected with the root --usecase option (its names).
    select = None if usecase == "clinical" else usecase
    v2, v3 = f"s3://mlflow/models/{name}/v2", f"s3://mlflow/models/{name}/v3"

    def rollout(*args: str) -> str:
        return _rollout(stack, *args, ns=ns, usecase=select)

    def wait_split(want: dict[str, int]) -> None:
        _wait_split(stack, want, ns, ksvc)

    rollout("canary", "--percent", "10", "--model-uri", v2)
    r2 = _revisions(cluster, ns, ksvc)[-1]
    assert r2 != r1
    wait_split({r1: 90, r2: 10})
    route = cluster.get("route.serving.knative.dev", ksvc, "-n", ns)
    tags = {t.get("tag"): t["revisionName"] for t in route["status"]["traffic"] if t.get("tag")}
    assert tags.get("prev") == r1  # KServe tags the last rolled-out revision; Knative routes the tag

    rollout("canary", "--percent", "50")
    wait_split({r1: 50, r2: 50})

    out = rollout("promote")
    assert "Stable" in out
    wait_split({r2: 100})

    rollout("canary", "--percent", "10", "--model-uri", v3)
    r3 = _revisions(cluster, ns, ksvc)[-1]
    assert r3 not in (r1, r2)
    wait_split({r2: 90, r3: 10})

    out = rollout("rollback")
    assert "RolledBack" in out
    wait_split({r2: 100})  # traffic is back on the promoted revision at once
    isvc = cluster.get("inferenceservice", name, "-n", ns)
    env = {
        e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]
    }  # valueFrom: the auth token
    assert env["STORAGE_URI"] == v2
    start = time.monotonic()
    assert rollout("status").startswith(f"{ns}/{name}: RolledBack")
    assert time.monotonic() - start < 120
