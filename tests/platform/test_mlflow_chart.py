"""charts/mlflow, rendered by the real helm: the Host allow-list MLflow 3 enforces, the server's own
ServiceAccount with GKE Workload Identity. The allow-list is checked with MLflow's own matcher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clinrisk import k8s_validate as kv

REPO = Path(__file__).resolve().parents[2]


def _render(**values: str) -> list[dict[str, Any]]:
    return kv.render_helm(
        kv.ensure_tools(REPO), REPO / "charts/mlflow", release="mlflow", namespace="mlflow", set_values=values
    )


def _deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(
        o
        for o in objs
        if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/name"] == "mlflow"
    )


def _allowed_hosts(objs: list[dict[str, Any]]) -> list[str]:
    (container,) = _deployment(objs)["spec"]["template"]["spec"]["containers"]
    (arg,) = [a for a in container["args"] if a.startswith("--allowed-hosts=")]
    return arg.split("=", 1)[1].split(",")


@pytest.mark.parametrize(
    "host",
    [
        "mlflow.mlflow.svc.cluster.local:5000",  # configs/cluster.yaml's tracking URI
        "mlflow:5000",
        "mlflow.mlflow:5000",
        "mlflow.mlflow.svc:5000",
        "localhost:5000",  # kubectl port-forward
        "127.0.0.1:5000",
    ],
)
def test_in_cluster_hosts_pass_mlflows_host_check(host: str) -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    assert is_allowed_host_header(_allowed_hosts(_render()), host)


def test_other_hosts_still_fail_the_check_and_extra_hosts_are_added() -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    hosts = _allowed_hosts(_render())
    assert "*" not in hosts
    assert not is_allowed_host_header(hosts, "evil.example:5000")
    extra = _allowed_hosts(_render(**{"extraAllowedHosts[0]": "mlflow.example.org"}))
    assert is_allowed_host_header(extra, "mlflow.example.org")


def test_release_name_and_namespace_follow_the_install() -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    objs = kv.render_helm(kv.ensure_tools(REPO), REPO / "charts/mlflow", release="tracking", namespace="ml")
    assert is_allowed_host_header(_allowed_hosts(objs), "tracking.ml.svc.cluster.local:5000")


def test_server_runs_as_its_own_service_account_with_workload_identity() -> None:
    gsa = "mlflow@project.iam.gserviceaccount.com"
    objs = _render(**{"serviceAccount.gcpServiceAccount": gsa})
    (sa,) = [o for o in objs if o["kind"] == "ServiceAccount"]
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == gsa
    pod = _deployment(objs)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"] == "mlflow"
    # kind: no annotation unless asked for
    (plain,) = [o for o in _render() if o["kind"] == "ServiceAccount"]
    assert "annotations" not in plain["metadata"]


def test_existing_service_account_can_be_used() -> None:
    objs = _render(**{"serviceAccount.create": "false", "serviceAccount.name": "shared"})
    assert not [o for o in objs if o["kind"] == "ServiceAccount"]
    assert _deployment(objs)["spec"]["template"]["spec"]["serviceAccountName"] == "shared"
