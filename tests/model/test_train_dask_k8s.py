"""``train.dask.cluster: kubernetes`` without a cluster: the DaskCluster it would create, its config checks, the
one-line failures when there is no API server, and the vendored operator manifests' checksums. The cluster
tier (tests/cluster/test_dask.py) runs the same code against a real API server and the real operator."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clinrisk.config import load_config
from clinrisk.dask_k8s import daskcluster_manifest, scheduler_address, worker_threads
from clinrisk.errors import ConfigError, StageError
from clinrisk.train import train_model
from tests.model.conftest import make_features_dataset, small_config

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "clinrisk")


def _cfg(*sets: str):  # type: ignore[no-untyped-def]
    return load_config(None, ["train.engine=dask", "train.dask.cluster=kubernetes", *sets]).train.dask


def test_daskcluster_manifest_is_restricted_and_sized() -> None:
    cfg = _cfg("train.dask.worker_cpu=2500m", "train.dask.worker_memory=3Gi", "train.dask.data_volume_claim=runs",
               "train.dask.namespace=ml")  # fmt: skip
    m = daskcluster_manifest("clinrisk-train-abc123", cfg, n_workers=3)
    assert m["kind"] == "DaskCluster" and m["apiVersion"] == "kubernetes.dask.org/v1"
    assert m["metadata"] == {
        "name": "clinrisk-train-abc123",
        "namespace": "ml",
        "labels": m["metadata"]["labels"],
    }
    worker = m["spec"]["worker"]
    assert worker["replicas"] == 3
    (wc,) = worker["spec"]["containers"]
    assert wc["resources"]["limits"] == {"cpu": "2500m", "memory": "3Gi"} == wc["resources"]["requests"]
    assert wc["args"][wc["args"].index("--nthreads") + 1] == "3"
    assert wc["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert worker["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "runs"}
    sched = m["spec"]["scheduler"]
    assert sched["service"]["selector"] == {
        "dask.org/cluster-name": "clinrisk-train-abc123", "dask.org/component": "scheduler"
    }  # fmt: skip
    # PodSecurity restricted (the clinrisk namespace enforces it)
    for spec in (worker["spec"], sched["spec"]):
        assert spec["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        for c in spec["containers"]:
            assert c["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            }


def test_daskcluster_pods_go_where_node_selector_and_tolerations_say() -> None:
    cfg = _cfg(
        'train.dask.node_selector={pool: train, "clinrisk.io/data-node": "true"}',
        "train.dask.tolerations=[{key: clinrisk.io/data-node, operator: Exists, effect: NoSchedule}]",
    )
    m = daskcluster_manifest("clinrisk-train-abc123", cfg, n_workers=2)
    for spec in (m["spec"]["worker"]["spec"], m["spec"]["scheduler"]["spec"]):
        assert spec["nodeSelector"] == {"pool": "train", "clinrisk.io/data-node": "true"}
        assert spec["tolerations"] == [
            {"key": "clinrisk.io/data-node", "operator": "Exists", "value": "", "effect": "NoSchedule"}
        ]
    plain = daskcluster_manifest("clinrisk-train-abc123", _cfg(), n_workers=2)
    for spec in (plain["spec"]["worker"]["spec"], plain["spec"]["scheduler"]["spec"]):
        assert "nodeSelector" not in spec and "tolerations" not in spec


def test_the_client_connects_to_the_scheduler_service_cluster_ip() -> None:
    from types import SimpleNamespace

    svc = SimpleNamespace(spec=SimpleNamespace(cluster_ip="10.0.0.17"))
    assert scheduler_address(svc, "clinrisk-train-abc123", "ml") == "tcp://10.0.0.17:8786"
    headless = SimpleNamespace(spec=SimpleNamespace(cluster_ip="None"))
    assert (
        scheduler_address(headless, "clinrisk-train-abc123", "ml")
        == "tcp://clinrisk-train-abc123-scheduler.ml.svc:8786"
    )


@pytest.mark.parametrize(("cpu", "threads"), [("500m", 1), ("1", 1), ("2", 2), ("2.5", 3), ("4000m", 4)])
def test_worker_threads(cpu: str, threads: int) -> None:
    assert worker_threads(cpu) == threads


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("train.dask.cluster=yarn", "train.dask.cluster"),
        ("train.dask.namespace=Bad_NS", "train.dask.namespace"),
        ("train.dask.worker_cpu=lots", "train.dask.worker_cpu"),
        ("train.dask.worker_memory=2 GB", "train.dask.worker_memory"),
        ("train.dask.timeout_s=0", "train.dask.timeout_s"),
        ("train.dask.scheduler_address=localhost", "train.dask.scheduler_address"),
        ("train.dask.replicas=2", "train.dask.replicas"),
        ('train.dask.node_selector={"bad key!": x}', "train.dask.node_selector"),
        ('train.dask.node_selector={pool: "two words"}', "train.dask.node_selector"),
        ("train.dask.tolerations=[{key: pool, effect: Sometimes}]", r"train.dask.tolerations.0.effect"),
        ("train.dask.tolerations=[{operator: Exists}]", r"train.dask.tolerations.0.key"),
    ],
)
def test_bad_dask_config_names_the_key(setting: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [setting])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_features_dataset(tmp_path_factory.mktemp("k8s") / "features", n_patients=300, seed=5)


def test_unreachable_api_server_is_one_line(features: Path, tmp_path: Path) -> None:
    server = f"http://127.0.0.1:{_closed_port()}"
    kc = _kubeconfig(tmp_path / "kc", server)
    cfg = small_config(
        None, "train.engine=dask", "train.dask.cluster=kubernetes", f"train.dask.kubeconfig={kc}"
    )
    with pytest.raises(StageError) as err:
        train_model(cfg, features, tmp_path / "out")
    assert str(err.value) == f"train.dask: cannot reach the Kubernetes API server at {server} (MaxRetryError)"


def test_cli_missing_kubeconfig_and_unreachable_server_exit_2(features: Path, tmp_path: Path) -> None:
    base = ["train", "--features", str(features), "--set", "train.engine=dask",
            "--set", "train.dask.cluster=kubernetes", "--set", "split.temporal=false"]  # fmt: skip
    for extra, needle in [
        (tmp_path / "absent.kubeconfig", "train.dask.kubeconfig: "),
        (
            _kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{_closed_port()}"),
            "cannot reach the Kubernetes API",
        ),
    ]:
        proc = subprocess.run(
            [CLI, *base, "--set", f"train.dask.kubeconfig={extra}", "--out", str(tmp_path / "out")],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
        assert not (tmp_path / "out").exists()


def test_vendored_operator_manifests_match_their_checksums() -> None:
    up = REPO / "manifests" / "dask" / "upstream"
    sums = [
        ln.split() for ln in (up / "SHA256SUMS").read_text().splitlines() if ln and not ln.startswith("#")
    ]
    assert sums, "no checksums"
    for digest, rel in sums:
        assert hashlib.sha256((up / rel).read_bytes()).hexdigest() == digest, rel
    crds = [d for d in yaml.safe_load_all((up / "dask-kubernetes-2025.4.3" / "crds.yaml").read_text()) if d]
    assert sorted(d["spec"]["names"]["kind"] for d in crds) == [
        "DaskAutoscaler", "DaskCluster", "DaskJob", "DaskWorkerGroup"
    ]  # fmt: skip


SIGTERM_PROBE = """
import sys, time
from clinrisk.dask_k8s import _sigterm_unwinds
with _sigterm_unwinds():
    try:
        print("ready", flush=True)
        time.sleep(60)
    finally:
        open(sys.argv[1], "w").write("cleaned up")
"""


def test_sigterm_runs_the_teardown_in_a_process_without_a_handler(tmp_path: Path) -> None:
    """A KFP task process has Python's default SIGTERM (no ``finally``); inside the DaskCluster's lifetime the
    signal unwinds instead, so the deletion in ``finally`` runs."""
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_PROBE, str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert marker.read_text() == "cleaned up", stderr
    assert "Interrupted: SIGTERM" in stderr
