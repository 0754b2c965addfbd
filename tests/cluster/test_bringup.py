"""`cluster.sh up` failure path: a component that cannot start gives one line naming it and its log file,
and `down` leaves no process behind."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from clinrisk import k8s_validate as kv
from tests.cluster.conftest import CLUSTER_SH, REPO, go_available


def test_apiserver_that_cannot_start_is_named_with_its_log(tmp_path: Path) -> None:
    if not go_available():
        pytest.skip("no Go toolchain: the control plane is built from Go modules (install Go >= 1.25)")
    tools = kv.ensure_tools(REPO)
    with socket.socket() as busy:  # the API port is taken: kube-apiserver must fail to bind
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {
            **os.environ,
            "CLINRISK_CLUSTER_DIR": str(tmp_path / "plane"),
            "CLINRISK_ETCD_PORT": "44790",
            "CLINRISK_API_PORT": str(busy.getsockname()[1]),
            "KUBECTL": str(tools.kubectl),
            "PATH": os.environ.get("PATH", "") + ":/usr/local/go/bin",
        }
        try:
            proc = subprocess.run(
                [str(CLUSTER_SH), "up"], env=env, capture_output=True, text=True, timeout=600, check=False
            )
        finally:
            subprocess.run([str(CLUSTER_SH), "down"], env=env, capture_output=True, timeout=120, check=False)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    log = tmp_path / "plane" / "logs" / "kube-apiserver.log"
    assert errors[0].startswith("error: kube-apiserver: ") and str(log) in errors[0]
    assert "address already in use" in log.read_text()
    status = subprocess.run([str(CLUSTER_SH), "status"], env=env, capture_output=True, text=True, check=False)
    assert "running" not in status.stdout
