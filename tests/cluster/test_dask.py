"""The Dask Kubernetes operator and the train step's DaskCluster on the local control plane (issue 20).

What runs for real:
- the vendored manifests/dask (dask-kubernetes 2025.4.3 CRDs, operator RBAC, the train step's RBAC), server-side
  applied to a real kube-apiserver;
- the RBAC answers for the train step's accounts (clinrisk-train-dask, and kubeflow/pipeline-runner, which
  KFP runs it as), asked of the API server with SubjectAccessReviews (``kubectl auth can-i --as``);
- the real operator (dask-kubernetes 2025.4.3, a kopf controller, from its own cached venv made by
  scripts/cluster/dask-operator-venv.sh) as a local process under its ServiceAccount's token, so the upstream
  ClusterRole is what it gets; its in-cluster Deployment is scaled to 0;
- the train step (``train.engine=dask``, ``train.dask.cluster=kubernetes``) under the clinrisk-train-dask
  ServiceAccount's token: it creates the DaskCluster, the operator makes the scheduler Deployment + Service and
  the worker group + worker Deployments, the ReplicaSet controller makes pods, KWOK marks them Running, the
  operator reports the cluster Running, the step trains and deletes the DaskCluster; the garbage collector
  removes everything the operator made.

KWOK's pods run nothing, so the tests on KWOK nodes send the training traffic to a real ``dask scheduler``
and two ``dask worker`` processes started on loopback, reached through ``train.dask.scheduler_address`` (the
override a driver outside the cluster uses with kubectl port-forward). The last test runs the DaskCluster on
the plane's real data node (``cluster.sh node-up``: containerd, kubelet, kube-proxy, CoreDNS): the pipeline
image's scheduler and workers run in pods there, find each other through cluster DNS, read the shards from a
PersistentVolumeClaim, and the step reaches the scheduler's cluster IP. Not exercised: the NetworkPolicy (the
bridge CNI does not enforce policies).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from clinrisk import metrics as M
from clinrisk.bundle import load_bundle
from clinrisk.errors import StageError
from clinrisk.evaluate import load_test_frame
from clinrisk.train import train_model
from tests.cluster.conftest import DATA_NODE, REPO, Cluster, split_crds
from tests.model.conftest import make_features_dataset, small_config

NS = "clinrisk"
OP_NS = "dask-operator"
TRAIN_SA = f"system:serviceaccount:{NS}:clinrisk-train-dask"
# Standalone KFP runs the train pod as kubeflow/pipeline-runner: the same RoleBinding holds it.
KFP_SA = "system:serviceaccount:kubeflow:pipeline-runner"
DASK_KINDS = "daskclusters.kubernetes.dask.org,daskworkergroups.kubernetes.dask.org"
OWNED = "deployments,services,pods,replicasets"
CRD = "daskclusters.kubernetes.dask.org"


def _render() -> list[dict[str, Any]]:
    kubectl = REPO / ".tools" / "k8s" / "kubectl"
    out = subprocess.run(
        [str(kubectl), "kustomize", str(REPO / "manifests" / "dask")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def _token_kubeconfig(cluster: Cluster, ns: str, account: str, path: Path) -> Path:
    token = cluster.kubectl("create", "token", account, "-n", ns, "--duration", "2h").stdout.strip()
    cfg = yaml.safe_load(cluster.kubeconfig.read_text())
    cfg["users"] = [{"name": cfg["users"][0]["name"], "user": {"token": token}}]
    path.write_text(yaml.safe_dump(cfg))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DaskPlane:
    cluster: Cluster
    train_kubeconfig: Path
    state: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def leftovers(self) -> str:
        """Every DaskCluster/WorkerGroup and every object labelled with a dask cluster name, in NS."""
        found = []
        for kinds, sel in ((DASK_KINDS, None), (OWNED, "dask.org/cluster-name")):
            args = ["get", kinds, "-n", NS, "-o", "name"] + (["-l", sel] if sel else [])
            found += self.cluster.kubectl(*args).stdout.split()
        return " ".join(found)


def _start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)


def _ensure_namespace(cluster: Cluster) -> None:
    """The pipeline namespace, restricted as the overlays make it; left as is when another test made it (a
    server-side apply here would drop the labels the platform fixture applied under the same manager)."""
    if cluster.kubectl("get", "namespace", NS, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", NS)
        cluster.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted")


def test_missing_crd_is_one_line_and_leaves_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """Before manifests/dask is applied: the step names the missing CRD (and creates nothing)."""
    if cluster.kubectl("get", "crd", CRD, check=False).returncode == 0:
        pytest.skip("the DaskCluster CRD is already installed in this session")
    _ensure_namespace(cluster)
    cfg = small_config(
        None,
        "train.engine=dask",
        "train.dask.cluster=kubernetes",
        f"train.dask.kubeconfig={cluster.kubeconfig}",
    )
    with pytest.raises(StageError) as err:
        train_model(cfg, make_features_dataset(tmp_path / "f", n_patients=300, seed=3), tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and CRD in msg and "not installed" in msg, msg
    assert not (tmp_path / "out" / "model.txt").exists()


@pytest.fixture(scope="module")
def dask_plane(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskPlane]:
    state = tmp_path_factory.mktemp("dask")
    objs = _render()
    crds, rest = split_crds(objs)
    assert {c["metadata"]["name"] for c in crds} == {
        f"dask{k}.kubernetes.dask.org" for k in ("clusters", "workergroups", "jobs", "autoscalers")
    }
    _ensure_namespace(cluster)
    refused = cluster.apply_objects(crds, "manifests/dask CRDs")
    cluster.kubectl("wait", "--for", "condition=established", "--timeout=120s",
                    *[f"crd/{c['metadata']['name']}" for c in crds])  # fmt: skip
    refused += cluster.apply_objects(rest, "manifests/dask")
    assert not refused, "refused by the API server:\n" + "\n".join(refused)
    # The same operator runs here as a process (KWOK pods run nothing), under its own ServiceAccount.
    cluster.kubectl("scale", "deployment", "--all", "--replicas", "0", "-n", OP_NS)
    venv = subprocess.run(
        [str(REPO / "scripts" / "cluster" / "dask-operator-venv.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if venv.returncode != 0:
        pytest.fail(venv.stderr.strip().splitlines()[-1], pytrace=False)
    bindir = Path(venv.stdout.strip().splitlines()[-1])
    op_kc = _token_kubeconfig(cluster, OP_NS, "dask-kubernetes-operator", state / "operator.kubeconfig")
    op_log = state / "operator.log"
    operator = _start(
        [str(bindir / "kopf"), "run", "-m", "dask_kubernetes.operator.controller", "--verbose",
         "--all-namespaces", "--standalone"],
        op_log, {"KUBECONFIG": str(op_kc)},
    )  # fmt: skip
    plane = DaskPlane(
        cluster,
        _token_kubeconfig(cluster, NS, "clinrisk-train-dask", state / "train.kubeconfig"),
        state,
        [operator],
    )
    time.sleep(3)
    if operator.poll() is not None:
        pytest.fail(f"dask operator exited {operator.returncode}: {op_log.read_text()[-800:]}", pytrace=False)
    yield plane
    _stop(plane.procs)


def _can(cluster: Cluster, verb: str, resource: str, ns: str = NS, as_: str = TRAIN_SA) -> bool:
    proc = cluster.kubectl("auth", "can-i", verb, resource, "-n", ns, "--as", as_, check=False)
    return proc.stdout.strip() == "yes"


@pytest.mark.parametrize("account", [TRAIN_SA, KFP_SA], ids=["clinrisk-train-dask", "kfp-pipeline-runner"])
def test_train_rbac_is_exactly_what_the_step_calls(dask_plane: DaskPlane, account: str) -> None:
    c = dask_plane.cluster
    for verb in ("create", "get", "delete"):
        assert _can(c, verb, CRD, as_=account), verb
    assert _can(c, "get", "services", as_=account) and _can(c, "list", "pods", as_=account)
    for verb in ("list", "watch", "patch", "update", "deletecollection"):
        assert not _can(c, verb, CRD, as_=account), verb
    for verb, res in [("get", "secrets"), ("list", "secrets"), ("get", "configmaps"), ("create", "pods"),
                      ("create", "services"), ("delete", "services"), ("get", "pods/log"),
                      ("create", "daskworkergroups.kubernetes.dask.org"), ("create", "deployments")]:  # fmt: skip
        assert not _can(c, verb, res, as_=account), (verb, res)
    assert not _can(c, "create", CRD, ns="default", as_=account)  # a Role, not a ClusterRole
    assert not _can(c, "create", CRD, ns="kubeflow", as_=account)  # bound in clinrisk only
    assert not _can(c, "get", "services", ns=OP_NS, as_=account)


@pytest.fixture(scope="module")
def local_dask(dask_plane: DaskPlane) -> str:
    """A real dask scheduler and two workers on loopback: the data plane KWOK's pods cannot be."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    dask_plane.procs.append(
        _start([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                "--dashboard-address", ":0", "--no-show"], dask_plane.state / "scheduler.log")
    )  # fmt: skip
    for i in range(2):
        dask_plane.procs.append(
            _start([str(bindir / "dask"), "worker", address, "--nthreads", "1", "--name", f"w{i}",
                    "--dashboard-address", ":0", "--memory-limit", "0"], dask_plane.state / f"worker{i}.log")
        )  # fmt: skip
    return address


class Observer(threading.Thread):
    """Records, once a second, what exists in NS for any DaskCluster (what the operator and controllers made)."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster, self.seen, self.phases = cluster, set(), set()
        self.running_pods: set[str] = set()
        self.nodes: set[str] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(1.0):
            proc = self.cluster.kubectl("get", f"{DASK_KINDS},{OWNED}", "-n", NS, "-o", "json", check=False)
            if proc.returncode != 0:
                continue
            for o in json.loads(proc.stdout)["items"]:
                kind, meta = o["kind"], o["metadata"]
                if kind == "DaskCluster":
                    self.phases.add((o.get("status") or {}).get("phase"))
                elif "dask.org/cluster-name" not in (meta.get("labels") or {}) and kind != "DaskWorkerGroup":
                    continue
                self.seen.add(f"{kind}/{meta['name']}")
                if kind == "Pod" and (o.get("status") or {}).get("phase") == "Running":
                    self.running_pods.add(meta["name"])
                if kind == "Pod" and o["spec"].get("nodeName"):
                    self.nodes.add(o["spec"]["nodeName"])

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def _k8s_sets(plane: DaskPlane, *overrides: str) -> list[str]:
    return [
        "train.engine=dask", "train.dask_workers=2", "train.dask.cluster=kubernetes",
        f"train.dask.kubeconfig={plane.train_kubeconfig}", "train.dask.timeout_s=120", *overrides,
    ]  # fmt: skip


def _k8s_cfg(plane: DaskPlane, *overrides: str) -> Any:
    return small_config(None, *_k8s_sets(plane, *overrides))


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_features_dataset(tmp_path_factory.mktemp("daskfeat") / "f", n_patients=1500, seed=11)


def test_train_step_creates_daskcluster_trains_and_tears_down(
    dask_plane: DaskPlane, local_dask: str, features: Path, tmp_path: Path
) -> None:
    assert dask_plane.leftovers() == ""
    obs = Observer(dask_plane.cluster)
    obs.start()
    try:
        result = train_model(_k8s_cfg(dask_plane, f"train.dask.scheduler_address={local_dask}"), features,
                             tmp_path / "out")  # fmt: skip
    finally:
        obs.stop()
    assert result["metadata"]["num_trees"] >= 1
    kinds = {s.split("/")[0] for s in obs.seen}
    # What the operator made from the CR (and the controllers from that), all observed while the fit ran.
    assert {"DaskCluster", "DaskWorkerGroup", "Deployment", "Service", "Pod"} <= kinds, obs.seen
    # Pending: components created; Running: the operator saw the scheduler Service (it may stay Pending:
    # dask/dask-kubernetes#968, a race in the operator's own status writes).
    assert obs.phases & {"Pending", "Running"}, obs.phases
    pods = {s.split("/", 1)[1] for s in obs.seen if s.startswith("Pod/")}
    assert len([p for p in pods if "-worker-" in p]) == 2 and any("-scheduler-" in p for p in pods), pods
    assert obs.running_pods, "KWOK never reported a DaskCluster pod Running"
    # Torn down: the CR and everything made from it are gone when train_model returns.
    assert dask_plane.leftovers() == ""


def test_failed_fit_still_tears_down(dask_plane: DaskPlane, features: Path, tmp_path: Path) -> None:
    """The cluster comes up, but the scheduler cannot be reached: one-line error, nothing left behind."""
    dead = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(StageError) as err:
        train_model(_k8s_cfg(dask_plane, f"train.dask.scheduler_address={dead}", "train.dask.timeout_s=20"),
                    features, tmp_path / "out")  # fmt: skip
    assert "\n" not in str(err.value) and dead in str(err.value), err.value
    assert dask_plane.leftovers() == ""


# The train step as a KFP task runs it: a bare Python process whose SIGTERM is Python's default (no handler).
BARE_TRAIN = (
    "import sys; from pathlib import Path; from clinrisk.config import load_config; "
    "from clinrisk.train import train_model; "
    "train_model(load_config(None, sys.argv[3:]), Path(sys.argv[1]), Path(sys.argv[2]))"
)


@pytest.mark.parametrize("how", ["cli", "bare-process"])
def test_sigterm_during_startup_tears_down(
    dask_plane: DaskPlane, features: Path, tmp_path: Path, how: str
) -> None:
    """SIGTERM while the step waits for its DaskCluster: the CR is deleted. `clinrisk train` exits 143 with no
    traceback; a bare process (a KFP task's default SIGTERM) also runs the deletion before it dies."""
    # The operator is paused so the cluster stays un-Running: the step is in its wait when the signal comes.
    os.killpg(dask_plane.procs[0].pid, signal.SIGSTOP)
    try:
        sets = _k8s_sets(dask_plane, "split.temporal=false")
        out = str(tmp_path / "out")
        if how == "cli":
            argv = [str(Path(sys.executable).parent / "clinrisk"), "train", *[a for s in sets for a in ("--set", s)],
                    "--features", str(features), "--out", out]  # fmt: skip
        else:
            argv = [sys.executable, "-c", BARE_TRAIN, str(features), out, *sets]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while "daskcluster" not in dask_plane.leftovers().lower():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        os.killpg(dask_plane.procs[0].pid, signal.SIGCONT)
    if how == "cli":
        assert proc.returncode == 143, stderr
        assert "Traceback" not in stderr
    else:
        assert proc.returncode != 0 and "Interrupted: SIGTERM" in stderr, stderr
    assert dask_plane.leftovers() == ""


def test_forbidden_namespace_is_one_line(dask_plane: DaskPlane, features: Path, tmp_path: Path) -> None:
    """The train account's Role is in clinrisk only: elsewhere the create is refused, named, nothing made."""
    with pytest.raises(StageError) as err:
        train_model(_k8s_cfg(dask_plane, "train.dask.namespace=default"), features, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and "forbidden" in msg and "create DaskCluster default/" in msg, msg
    assert dask_plane.cluster.kubectl("get", "daskclusters", "-n", "default", "-o", "name").stdout == ""


def test_no_operator_times_out_and_tears_down(dask_plane: DaskPlane, features: Path, tmp_path: Path) -> None:
    """Nobody reconciles the DaskCluster (operator paused): the timeout names that, and the CR is deleted."""
    os.killpg(dask_plane.procs[0].pid, signal.SIGSTOP)
    try:
        with pytest.raises(StageError) as err:
            train_model(_k8s_cfg(dask_plane, "train.dask.timeout_s=5"), features, tmp_path / "out")
    finally:
        os.killpg(dask_plane.procs[0].pid, signal.SIGCONT)
    msg = str(err.value)
    assert "\n" not in msg and "not up after 5s" in msg and "no operator reported" in msg, msg
    assert dask_plane.leftovers() == ""


# ------------------------------------------------------------------------------------------ on real pods

PIPELINE_IMAGE = "clinrisk/pipeline:0.1.0"


def _docker_up() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False).returncode == 0


@pytest.fixture(scope="module")
def pipeline_image_on_node(data_node: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The pipeline image (``make test-images`` builds it; built here when missing) in the data node's
    containerd: ``docker save`` piped into ``ctr images import``. A dockerd started for this is stopped after."""
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    dockerd = None
    if not _docker_up():
        if shutil.which("dockerd") is None:
            pytest.fail(
                "the DaskCluster test on the data node needs the pipeline image: no dockerd (make test-images)"
            )
        dockerd = _start(["dockerd", "--bridge=none", "--iptables=false"], log)
        deadline = time.monotonic() + 90
        while not _docker_up():
            if dockerd.poll() is not None or time.monotonic() > deadline:
                _stop([dockerd])
                pytest.fail(f"dockerd did not start: {log.read_text()[-500:]}", pytrace=False)
            time.sleep(1)
    try:
        have = subprocess.run(
            ["docker", "image", "inspect", PIPELINE_IMAGE], capture_output=True, check=False
        )
        if have.returncode != 0:
            build = subprocess.run([str(REPO / "images" / "build.sh"), "pipeline"], capture_output=True,
                                   text=True, timeout=3600, check=False)  # fmt: skip
            assert build.returncode == 0, build.stderr[-2000:]
        save = subprocess.Popen(["docker", "save", PIPELINE_IMAGE], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["ctr", "--address", str(data_node / "containerd.sock"), "--namespace", "k8s.io", "images",
             "import", "-"], stdin=save.stdout, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert save.wait(timeout=60) == 0 and imported.returncode == 0, imported.stderr
    finally:
        if dockerd is not None:
            _stop([dockerd])
    yield PIPELINE_IMAGE


@pytest.fixture(scope="module")
def shared_features() -> Iterator[Path]:
    """Features where the pods can read them: a host folder (world-readable, unlike pytest's 0700 tmp) that
    a hostPath PersistentVolume exposes at the same path."""
    root = Path(tempfile.mkdtemp(prefix="clinrisk-dask-data-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield make_features_dataset(root / "f", n_patients=1500, seed=11)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_daskcluster_trains_on_real_pods_on_the_data_node(
    dask_plane: DaskPlane, data_node: Path, pipeline_image_on_node: str, shared_features: Path, tmp_path: Path
) -> None:
    """The same step as above with nothing local: the operator's scheduler and worker pods run the pipeline
    image on the data node, the workers find the scheduler Service through cluster DNS and read the shards
    from a PersistentVolumeClaim, the step (on the node's host) reaches the scheduler's cluster IP through
    kube-proxy's rules; the model learned as much as one process on the same data, and the DaskCluster's
    containers are gone from the node afterwards."""
    cluster, root = dask_plane.cluster, shared_features.parent
    pv = {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "clinrisk-dask-data"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                 "hostPath": {"path": str(root), "type": "Directory"},
                 "claimRef": {"namespace": NS, "name": "clinrisk-dask-data"}},
    }  # fmt: skip
    pvc = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "clinrisk-dask-data", "namespace": NS},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": "clinrisk-dask-data",
                 "resources": {"requests": {"storage": "1Gi"}}},
    }  # fmt: skip
    assert not cluster.apply_objects([pv, pvc], "data PV")
    cluster.kubectl("wait", "-n", NS, "--for", "jsonpath={.status.phase}=Bound", "pvc/clinrisk-dask-data",
                    "--timeout", "60s")  # fmt: skip
    on_node = [
        f"train.dask.image={pipeline_image_on_node}",
        'train.dask.node_selector={"clinrisk.io/data-node": "true"}',
        "train.dask.tolerations=[{key: clinrisk.io/data-node, operator: Exists, effect: NoSchedule}]",
        "train.dask.data_volume_claim=clinrisk-dask-data", f"train.dask.data_mount_path={root}",
        # the node's 2 CPUs hold a scheduler and two workers
        "train.dask.scheduler_cpu=250m", "train.dask.scheduler_memory=768Mi",
        "train.dask.worker_cpu=750m", "train.dask.worker_memory=1536Mi", "train.dask.timeout_s=300",
    ]  # fmt: skip
    obs = Observer(cluster)
    obs.start()
    try:
        result = train_model(_k8s_cfg(dask_plane, *on_node), shared_features, tmp_path / "pods")
    finally:
        obs.stop()
    assert result["metadata"]["num_trees"] >= 1
    # Every DaskCluster pod ran on the data node: a scheduler and two workers, all Running at some point.
    assert obs.nodes == {DATA_NODE}, obs.nodes
    running = obs.running_pods
    assert len([p for p in running if "-worker-" in p]) == 2 and any("-scheduler-" in p for p in running), (
        running
    )
    # The same data on one process: the pods' model learned as much (partitioning moves a small model's
    # AUC by a few thousandths; the 0.002 bound on 8,000 patients is tests/model/test_train_dask.py's).
    train_model(small_config(None), shared_features, tmp_path / "one")
    df = load_test_frame(shared_features)
    y = df["label"].cast(pl.Float64).to_numpy()
    auc = {k: M.roc_auc(y, load_bundle(tmp_path / k).predict_proba(df)) for k in ("pods", "one")}
    assert auc["one"] > 0.7 and abs(auc["pods"] - auc["one"]) <= 0.01, auc
    # Torn down, and the node's containerd holds none of the cluster's containers any more.
    assert dask_plane.leftovers() == ""
    deadline = time.monotonic() + 60
    while (tasks := _node_tasks(data_node)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not tasks, tasks
    cluster.kubectl("delete", "-n", NS, "pvc/clinrisk-dask-data", "--wait=false")
    cluster.kubectl("delete", "pv/clinrisk-dask-data", "--wait=false")


def _node_tasks(data_node: Path) -> list[str]:
    """Running containers on the data node, other than pod sandboxes (pause)."""
    out = subprocess.run(
        ["ctr", "--address", str(data_node / "containerd.sock"), "--namespace", "k8s.io", "containers", "ls"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    return [ln for ln in out.splitlines()[1:] if "pipeline" in ln]
