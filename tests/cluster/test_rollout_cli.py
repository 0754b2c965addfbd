"""`clinrisk rollout` against the real API server: an unreachable server, a wrong token and a forbidden
account each end with exit 2 and one `error:` line (no traceback); the rollout account gets through."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.conftest import Cluster

CLI = [str(Path(sys.executable).parent / "clinrisk")]


def _kubeconfig(tmp: Path, server: str, ca: str | None, token: str) -> Path:
    cluster: dict[str, Any] = {"server": server}
    if ca:
        cluster["certificate-authority"] = ca
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp / f"kubeconfig-{abs(hash((server, token)))}"
    path.write_text(yaml.safe_dump(doc))
    return path


def _rollout(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.run(
        [*CLI, "rollout", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _server_and_ca(cluster: Cluster) -> tuple[str, str]:
    cfg = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
    return cfg["server"], cfg["certificate-authority"]


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


def test_unreachable_server_exits_2(tmp_path: Path) -> None:
    kc = _kubeconfig(tmp_path, f"https://127.0.0.1:{_closed_port()}", None, "x")
    line = _one_error_line(_rollout(kc, "status"))
    assert "unreachable" in line


def test_wrong_token_exits_2(cluster: Cluster, tmp_path: Path) -> None:
    server, ca = _server_and_ca(cluster)
    kc = _kubeconfig(tmp_path, server, ca, "not-a-real-token")
    line = _one_error_line(_rollout(kc, "canary", "--percent", "10", "--no-wait"))
    assert "401 (not authenticated)" in line


def test_forbidden_account_exits_2(cluster: Cluster, platform: Any, tmp_path: Path) -> None:
    token = cluster.kubectl("create", "token", "clinrisk-predictor", "-n", "clinrisk").stdout.strip()
    server, ca = _server_and_ca(cluster)
    line = _one_error_line(_rollout(_kubeconfig(tmp_path, server, ca, token), "status"))
    assert "403 (forbidden)" in line and "clinrisk/clinrisk" in line


def test_rollout_account_reads_the_service(cluster: Cluster, platform: Any, tmp_path: Path) -> None:
    """The rollout account's token is accepted and authorised for what the CLI calls."""
    token = cluster.kubectl("create", "token", "clinrisk-rollout", "-n", "clinrisk").stdout.strip()
    server, ca = _server_and_ca(cluster)
    proc = _rollout(_kubeconfig(tmp_path, server, ca, token), "status")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("clinrisk/clinrisk: ")
