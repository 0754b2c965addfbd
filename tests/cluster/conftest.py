"""A real control plane for the cluster tier (``make test-cluster``): etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and KWOK, built from upstream Go modules by tools/controlplane.

Every test here is marked ``cluster``; ``make test`` deselects the marker, and without a Go toolchain the
tests skip with one line. Once Go is there, a binary that fails to build or start fails the session with
the line naming it and its log file.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinrisk import k8s_validate as kv

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "tools" / "controlplane" / "cluster.sh"
# Ports apart from `make cluster-local`'s defaults, so a developer's running plane is left alone.
# Admission webhooks whose servers are not part of the admission tier, and cert-manager objects (cert-manager
# is not installed on the local plane: the CA bundles are written directly).
NOT_IN_THIS_TIER = {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "Certificate", "Issuer"}
HELM_NAMESPACE = "clinrisk-helm"
TEST_PORTS = {
    "CLINRISK_ETCD_PORT": "24790",
    "CLINRISK_API_PORT": "26443",
    "CLINRISK_KCM_PORT": "26457",
    "CLINRISK_SCHED_PORT": "26459",
    "CLINRISK_KWOK_PORT": "26480",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the local control plane (make test-cluster)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(here):
            item.add_marker(pytest.mark.cluster)


def go_available() -> bool:
    return shutil.which("go") is not None or Path("/usr/local/go/bin/go").is_file()


@dataclass
class Cluster:
    """A running control plane: the admin kubeconfig and a kubectl bound to it."""

    kubeconfig: Path
    kubectl_bin: Path
    helm_bin: Path
    state_dir: Path
    applied: list[str] = field(default_factory=list)

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.kubectl_bin), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply_objects(self, objs: Sequence[dict[str, Any]], source: str) -> list[str]:
        """Server-side apply each object on its own; return one line per refusal with the server's message."""
        refused = []
        for obj in objs:
            proc = self.kubectl(
                "apply", "--server-side", "--force-conflicts", "--field-manager", "clinrisk-tests",
                "-f", "-", stdin=yaml.safe_dump(obj), check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                refused.append(f"{source}: {kv.object_id(obj)}: {proc.stderr.strip()}")
            else:
                self.applied.append(f"{source}: {kv.object_id(obj)}")
        return refused


def split_crds(objs: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    crds = [o for o in objs if o["kind"] == "CustomResourceDefinition"]
    return crds, [o for o in objs if o["kind"] != "CustomResourceDefinition"]


def cluster_script_env(state: Path, kubectl: Path) -> dict[str, str]:
    """The environment tools/controlplane/cluster.sh needs to act on the test plane (its ports, its state)."""
    return {
        **os.environ,
        **{k: os.environ.get(k, v) for k, v in TEST_PORTS.items()},
        "CLINRISK_CLUSTER_DIR": str(state),
        "KUBECTL": str(kubectl),
        "PATH": os.environ.get("PATH", "") + ":/usr/local/go/bin",
    }


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not go_available():
        pytest.skip("no Go toolchain: the control plane is built from Go modules (install Go >= 1.25)")
    tools = kv.ensure_tools(REPO)
    state = tmp_path_factory.mktemp("controlplane")
    env = cluster_script_env(state, tools.kubectl)
    proc = subprocess.run(
        [str(CLUSTER_SH), "up"], env=env, capture_output=True, text=True, timeout=3600, check=False
    )
    try:
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
            pytest.fail(lines[-1] if lines else proc.stderr.strip()[-1000:], pytrace=False)
        kubeconfig = Path(proc.stdout.strip().splitlines()[-1])
        yield Cluster(kubeconfig, tools.kubectl, tools.helm, state)
    finally:
        subprocess.run([str(CLUSTER_SH), "down"], env=env, capture_output=True, timeout=120, check=False)


def _render(cluster: Cluster, overlay: str) -> list[dict[str, Any]]:
    return kv.render_kustomize(kv.Tools(cluster.helm_bin, cluster.kubectl_bin), REPO / overlay)


def _wait_established(cluster: Cluster, crds: list[dict[str, Any]]) -> None:
    names = [f"crd/{c['metadata']['name']}" for c in crds]
    cluster.kubectl("wait", "--for", "condition=established", "--timeout=120s", *names)


@pytest.fixture(scope="session")
def platform(cluster: Cluster) -> dict[str, list[dict[str, Any]]]:
    """Knative + KServe (pinned manifests and this project's overlays), then clinrisk's kind overlay and the
    serving chart; returns what was applied per source. Fails naming every refused object."""
    sources = {
        "manifests/platform/knative": _render(cluster, "manifests/platform/knative"),
        "manifests/platform/kserve": _render(cluster, "manifests/platform/kserve"),
    }
    refused: list[str] = []
    crds = [c for objs in sources.values() for c in split_crds(objs)[0]]
    refused += cluster.apply_objects(crds, "CRDs")
    _wait_established(cluster, crds)
    for source, objs in sources.items():
        rest = [o for o in split_crds(objs)[1] if o["kind"] not in NOT_IN_THIS_TIER]
        refused += cluster.apply_objects(rest, source)
    overlay = _render(cluster, "manifests/overlays/kind")
    refused += cluster.apply_objects(overlay, "manifests/overlays/kind")
    sources["manifests/overlays/kind"] = overlay
    ns = copy.deepcopy(next(o for o in overlay if o["kind"] == "Namespace"))
    ns["metadata"]["name"] = HELM_NAMESPACE
    chart = [
        ns,
        *kv.render_helm(
            kv.Tools(cluster.helm_bin, cluster.kubectl_bin),
            REPO / "charts" / "clinrisk-serving",
            release="clinrisk",
            namespace=HELM_NAMESPACE,
            # the chart has no default (a placeholder would deploy what nothing uploaded); the overlay's URI
            set_values={"model.uri": "s3://mlflow/models/clinrisk/current"},
        ),
    ]
    refused += cluster.apply_objects(chart, "charts/clinrisk-serving")
    sources["charts/clinrisk-serving"] = chart
    assert not refused, "refused by the API server:\n" + "\n".join(refused)
    (cluster.state_dir / "applied.txt").write_text("\n".join(cluster.applied) + "\n")
    return sources


def cluster_script(cluster: Cluster, action: str) -> subprocess.CompletedProcess[str]:
    """``tools/controlplane/cluster.sh ACTION`` on the test plane."""
    env = cluster_script_env(cluster.state_dir, cluster.kubectl_bin)
    return subprocess.run(
        [str(CLUSTER_SH), action], env=env, capture_output=True, text=True, timeout=900, check=False
    )


DATA_NODE = "clinrisk-node-1"


@pytest.fixture(scope="module")
def data_node(cluster: Cluster) -> Iterator[Path]:
    """The plane's real data node (``cluster.sh node-up``) for one test module; its state folder. Stopped
    after the module, and so checked to leave nothing only where a test says so."""
    if os.geteuid() != 0:
        pytest.skip("node-up needs root (containerd, runc, a bridge, iptables)")
    proc = cluster_script(cluster, "node-up")
    try:
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
            pytest.fail(lines[-1] if lines else proc.stderr.strip()[-1000:], pytrace=False)
        assert proc.stdout.strip().splitlines()[-1] == DATA_NODE
        yield cluster.state_dir / "node"
    finally:
        cluster_script(cluster, "node-down")
