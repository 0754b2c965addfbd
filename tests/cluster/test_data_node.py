"""A real data node on the local control plane (``tools/controlplane/cluster.sh node-up``).

containerd and runc (Debian), the CNI bridge plugins, the kubelet, kube-proxy (iptables) and CoreDNS (built
from their upstream Go modules) join the test plane as node ``clinrisk-node-1``, tainted so that only pods
that tolerate it run there. Its two images (the pod sandbox and ``netcheck``) are built from
tools/controlplane/nodeimages, since no registry is reachable. These tests check what KWOK cannot show:
processes really start and exit, a Service name resolves through cluster DNS and reaches a pod through
kube-proxy's rules, the API server reads a container's log from the kubelet, and ``node-down`` leaves
nothing on the host.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import CLUSTER_SH, DATA_NODE, Cluster, cluster_script, cluster_script_env

NODE = DATA_NODE
NS = "clinrisk-data-node"
NETCHECK = "clinrisk.local/netcheck:1.0"
TAINT = {"key": "clinrisk.io/data-node", "value": "true", "effect": "NoSchedule"}


def _pod(name: str, args: list[str], *, tolerate: bool = True, labels: dict[str, str] | None = None) -> dict:
    """A PodSecurity-restricted pod running netcheck with ``args``, placed on the data node."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never" if args[0] != "serve" else "Always",
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "netcheck",
                "image": NETCHECK,
                "imagePullPolicy": "Never",
                "args": args,
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    }
    if tolerate:
        spec["nodeSelector"] = {"clinrisk.io/data-node": "true"}
        spec["tolerations"] = [{"key": TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}]
    meta = {"name": name, "namespace": NS, "labels": labels or {}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def _apply(cluster: Cluster, *objs: dict) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))


def _wait_phase(cluster: Cluster, name: str, phases: set[str], timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pod = cluster.get("pod", name, "-n", NS)
        if pod.get("status", {}).get("phase") in phases:
            return pod
        time.sleep(0.5)
    raise AssertionError(
        f"pod {name}: not {phases} after {timeout_s}s: {json.dumps(pod.get('status'))[:800]}"
    )


def _http_get(url: str) -> str:
    # No proxy: the request must go through this host's routes (the bridge, kube-proxy's rules).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        return str(resp.read().decode())


@pytest.fixture(scope="module")
def server(cluster: Cluster, data_node: Path) -> dict[str, Any]:
    """A netcheck server pod on the data node behind Service ``netcheck``, in a restricted namespace."""
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NS, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "netcheck", "namespace": NS},
        "spec": {"selector": {"app": "netcheck"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    _apply(cluster, ns)
    _apply(cluster, _pod("server", ["serve", "8080"], labels={"app": "netcheck"}), svc)
    cluster.kubectl("wait", "-n", NS, "--for", "condition=Ready", "pod/server", "--timeout", "90s")
    pod, service = cluster.get("pod", "server", "-n", NS), cluster.get("service", "netcheck", "-n", NS)
    # Ready pod -> EndpointSlice -> kube-proxy's next sync: until then the ClusterIP rejects connections.
    deadline = time.monotonic() + 60
    while True:
        try:
            _http_get(f"http://{service['spec']['clusterIP']}/")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    return {"pod": pod, "service": service}


def test_the_data_node_is_a_kubelet_on_containerd_and_tainted(cluster: Cluster, data_node: Path) -> None:
    node = cluster.get("node", NODE)
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://"), info
    assert info["kubeletVersion"] == "v1.34.0", info
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    assert {k: TAINT[k] for k in ("key", "value", "effect")} in [
        {k: t.get(k) for k in ("key", "value", "effect")} for t in node["spec"].get("taints", [])
    ]
    # The KWOK nodes stay: everything that does not tolerate the taint keeps running there.
    kwok = [n for n in cluster.get("nodes")["items"] if n["metadata"]["name"].startswith("kwok-node-")]
    assert kwok


def test_a_pod_serves_on_its_ip_and_through_its_service(cluster: Cluster, server: dict[str, Any]) -> None:
    pod, svc = server["pod"], server["service"]
    assert pod["spec"]["nodeName"] == NODE
    assert _http_get(f"http://{pod['status']['podIP']}:8080/") == "netcheck server\n"
    # The ClusterIP exists only in kube-proxy's iptables rules.
    assert _http_get(f"http://{svc['spec']['clusterIP']}/") == "netcheck server\n"


def test_a_pod_reaches_a_service_by_its_cluster_dns_name(cluster: Cluster, server: dict[str, Any]) -> None:
    """A client pod on the node: CoreDNS answers the Service name, kube-proxy routes to the server pod; the
    container's exit code becomes the pod's phase and its output is read back from the kubelet."""
    _apply(cluster, _pod("client", ["get", f"http://netcheck.{NS}.svc.cluster.local/"]))
    pod = _wait_phase(cluster, "client", {"Succeeded", "Failed"})
    log = cluster.kubectl("logs", "-n", NS, "client").stdout
    assert pod["status"]["phase"] == "Succeeded", log
    assert log == "200 OK netcheck server\n"


def test_an_unknown_name_fails_the_pod_with_its_error(cluster: Cluster, server: dict[str, Any]) -> None:
    """The check can fail: a name CoreDNS does not know exits 1, and the pod is Failed with the resolver's
    error in its log."""
    _apply(cluster, _pod("lost", ["resolve", f"missing.{NS}.svc.cluster.local"]))
    pod = _wait_phase(cluster, "lost", {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Failed"
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == 1
    assert "no such host" in cluster.kubectl("logs", "-n", NS, "lost").stdout + state.get("message", "")


def test_a_pod_without_the_toleration_stays_off_the_data_node(
    cluster: Cluster, server: dict[str, Any]
) -> None:
    _apply(cluster, _pod("elsewhere", ["serve", "8080"], tolerate=False))
    cluster.kubectl("wait", "-n", NS, "--for", "condition=PodScheduled", "pod/elsewhere", "--timeout", "60s")
    assert cluster.get("pod", "elsewhere", "-n", NS)["spec"]["nodeName"].startswith("kwok-node-")


def _pids(cluster: Cluster) -> dict[str, str]:
    names = ("containerd", "kubelet", "kube-proxy", "coredns")
    return {n: (cluster.state_dir / "pids" / n).read_text().strip() for n in names}


def test_node_up_again_keeps_the_running_node(cluster: Cluster, server: dict[str, Any]) -> None:
    """A second ``node-up`` (say, make cluster-local-node run twice) starts nothing new and breaks nothing."""
    before = _pids(cluster)
    proc = cluster_script(cluster, "node-up")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == NODE
    assert _pids(cluster) == before
    assert all(subprocess.run(["kill", "-0", pid], check=False).returncode == 0 for pid in before.values())
    assert _http_get(f"http://{server['service']['spec']['clusterIP']}/") == "netcheck server\n"


def _assert_host_clean(cluster: Cluster, data_node: Path) -> None:
    """No process, shim, mount, bridge, iptables chain, state folder, Node or RBAC object of the node left."""
    leftover = subprocess.run(["pgrep", "-af", str(data_node)], capture_output=True, text=True, check=False)
    assert leftover.stdout == "", leftover.stdout
    # kube-proxy's command line names only its kubeconfig, in the plane's folder
    proxy = subprocess.run(
        ["pgrep", "-af", str(cluster.state_dir / "kube-proxy.kubeconfig")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proxy.stdout == "", proxy.stdout
    shims = subprocess.run(["pgrep", "-af", "containerd-shim"], capture_output=True, text=True, check=False)
    assert str(data_node) not in shims.stdout
    assert str(data_node) not in Path("/proc/self/mountinfo").read_text()
    assert (
        subprocess.run(["ip", "link", "show", "clinrisk0"], capture_output=True, check=False).returncode != 0
    )
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    assert "KUBE-" not in rules
    assert not data_node.exists()
    assert cluster.kubectl("get", "node", NODE, check=False).returncode != 0
    assert cluster.kubectl("get", "clusterrole", "clinrisk-coredns", check=False).returncode != 0


def test_node_down_leaves_nothing_on_the_host(
    cluster: Cluster, server: dict[str, Any], data_node: Path
) -> None:
    """With a pod still running."""
    proc = cluster_script(cluster, "node-down")
    assert proc.returncode == 0, proc.stderr
    _assert_host_clean(cluster, data_node)


def test_node_down_cleans_up_after_a_node_up_killed_midway(cluster: Cluster, data_node: Path) -> None:
    """``node-up`` SIGKILLed once its kubelet is started leaves orphans (containerd, the kubelet, maybe a
    sandbox); ``node-down`` still removes everything."""
    env = cluster_script_env(cluster.state_dir, cluster.kubectl_bin)
    proc = subprocess.Popen([str(CLUSTER_SH), "node-up"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    kubelet_pid = cluster.state_dir / "pids" / "kubelet"
    deadline = time.monotonic() + 120
    while not kubelet_pid.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert kubelet_pid.exists(), "node-up never started its kubelet"
    proc.kill()
    proc.wait(timeout=30)
    orphan = kubelet_pid.read_text().strip()
    assert subprocess.run(["kill", "-0", orphan], check=False).returncode == 0  # really left behind
    done = cluster_script(cluster, "node-down")
    assert done.returncode == 0, done.stderr
    _assert_host_clean(cluster, data_node)
