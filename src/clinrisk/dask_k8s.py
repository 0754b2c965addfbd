"""A DaskCluster on Kubernetes for the length of one fit (``train.engine: dask``, ``train.dask.cluster: kubernetes``).

The train step creates a ``DaskCluster`` custom resource (the Dask Kubernetes operator, dask-kubernetes
2025.4.3, manifests/dask/), waits until the operator has made the scheduler Service and reports the cluster
``Pending`` or ``Running`` (see :func:`_wait_running`), yields the scheduler's address, and deletes the DaskCluster when the fit ends: on
success, on an error, on a timeout and on SIGINT/SIGTERM (clinrisk.interrupts turns those into an exception,
so this ``finally`` runs). The deletion is a foreground cascade: the API server keeps the DaskCluster until the
garbage collector has removed what the operator created from it (scheduler Deployment and Service, worker group,
worker Deployments, their pods), and the step waits for that, so "gone" means everything is gone.

Every failure is a :class:`StageError` with one line: an API server that cannot be reached, a missing
DaskCluster CRD, a missing namespace, a forbidden call (the step runs as ``clinrisk-train-dask``, or under
KFP as ``kubeflow/pipeline-runner``; manifests/dask/train-rbac.yaml binds both), or an operator that never
brings the cluster up.

Only the calls that RBAC grants are made: create/get/delete daskclusters, get services, list pods.
"""

from __future__ import annotations

import json
import math
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from clinrisk.errors import StageError

if TYPE_CHECKING:
    from clinrisk.config.modeling import DaskConfig

GROUP, VERSION, PLURAL = "kubernetes.dask.org", "v1", "daskclusters"
CRD_NAME = f"{PLURAL}.{GROUP}"
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
REQUEST_TIMEOUT_S = 15.0
POLL_S = 1.0
# The pod label manifests/dask/networkpolicy.yaml admits to the DaskCluster's pods; the compiled pipeline puts
# it on the train pod (pipelines/training.py).
CLIENT_LABEL = ("clinrisk.io/dask-client", "true")

# PodSecurity "restricted" (the clinrisk namespace enforces it; manifests/base/namespace.yaml).
_RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
_RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def worker_threads(cpu: str) -> int:
    """Threads per worker from its CPU quantity ("500m" → 1, "2" → 2, "2.5" → 3)."""
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, math.ceil(cores))


def cluster_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def daskcluster_manifest(name: str, cfg: DaskConfig, n_workers: int) -> dict[str, Any]:
    """The DaskCluster custom resource (pure): a scheduler and ``n_workers`` workers of ``cfg.image``."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if cfg.data_volume_claim:
        volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": cfg.data_volume_claim}}]
        mounts = [{"name": "data", "mountPath": cfg.data_mount_path}]

    def resources(cpu: str, memory: str) -> dict[str, Any]:
        q = {"cpu": cpu, "memory": memory}
        return {"requests": q, "limits": q}

    labels = {"app.kubernetes.io/part-of": "clinrisk", "app.kubernetes.io/component": "train-dask"}
    placement: dict[str, Any] = {}
    if cfg.node_selector:
        placement["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations:
        placement["tolerations"] = [t.model_dump(exclude_none=True) for t in cfg.tolerations]
    worker = {
        "name": "worker",
        "image": cfg.image,
        "command": ["dask", "worker"],
        "args": [
            "--name",
            "$(DASK_WORKER_NAME)",
            "--nthreads",
            str(worker_threads(cfg.worker_cpu)),
            "--memory-limit",
            "0",
            "--dashboard-address",
            "8788",
        ],
        "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
        "resources": resources(cfg.worker_cpu, cfg.worker_memory),
        "securityContext": _RESTRICTED_CONTAINER,
        "volumeMounts": mounts,
    }
    scheduler = {
        "name": "scheduler",
        "image": cfg.image,
        "command": ["dask", "scheduler"],
        "args": ["--port", str(SCHEDULER_PORT), "--dashboard-address", f":{DASHBOARD_PORT}"],
        "ports": [
            {"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"port": "http-dashboard", "path": "/health"},
            "initialDelaySeconds": 0,
            "periodSeconds": 5,
        },
        "resources": resources(cfg.scheduler_cpu, cfg.scheduler_memory),
        "securityContext": _RESTRICTED_CONTAINER,
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DaskCluster",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": labels},
        "spec": {
            "worker": {
                "replicas": n_workers,
                "spec": {
                    "securityContext": _RESTRICTED_POD,
                    "containers": [worker],
                    "volumes": volumes,
                    **placement,
                },
            },
            "scheduler": {
                "spec": {"securityContext": _RESTRICTED_POD, "containers": [scheduler], **placement},
                "service": {
                    "type": "ClusterIP",
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [
                        {
                            "name": "tcp-comm",
                            "protocol": "TCP",
                            "port": SCHEDULER_PORT,
                            "targetPort": "tcp-comm",
                        },
                        {
                            "name": "http-dashboard",
                            "protocol": "TCP",
                            "port": DASHBOARD_PORT,
                            "targetPort": "http-dashboard",
                        },
                    ],
                },
            },
        },
    }


# ------------------------------------------------------------------------------------------ API access


class _Api:
    """The three API groups the step uses, bound to one client (kubeconfig or in-cluster)."""

    def __init__(self, cfg: DaskConfig) -> None:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        try:
            if cfg.kubeconfig:
                api_client = config.new_client_from_config(config_file=cfg.kubeconfig)
            else:
                try:
                    config.load_incluster_config()
                    api_client = client.ApiClient()
                except ConfigException:
                    api_client = config.new_client_from_config()
        except (ConfigException, OSError, ValueError, TypeError) as exc:
            where = cfg.kubeconfig or "the pod's service account or ~/.kube/config"
            raise StageError(
                f"train.dask.kubeconfig: {where}: no usable Kubernetes credentials ({exc})"
            ) from exc
        # One attempt per call: an unreachable server is reported, not retried for minutes.
        api_client.configuration.retries = 1
        self.host = str(api_client.configuration.host)
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)


def _reason(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(exc, "reason", exc))


def _call(api: _Api, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """One API call; transport failures and refusals become one-line StageErrors naming the server."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    try:
        return fn(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
    except ApiException as exc:
        if exc.status == 403:
            raise StageError(f"train.dask: {what}: forbidden by {api.host}: {_reason(exc)}") from exc
        raise
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise StageError(
            f"train.dask: cannot reach the Kubernetes API server at {api.host} ({type(exc).__name__})"
        ) from exc


def _create(api: _Api, cfg: DaskConfig, body: dict[str, Any]) -> None:
    from kubernetes.client.exceptions import ApiException

    name = body["metadata"]["name"]
    try:
        _call(api, f"create DaskCluster {cfg.namespace}/{name}", api.custom.create_namespaced_custom_object,
              GROUP, VERSION, cfg.namespace, PLURAL, body)  # fmt: skip
    except ApiException as exc:
        details: dict[str, Any] = {}
        with suppress(TypeError, ValueError, AttributeError):
            details = json.loads(exc.body).get("details") or {}
        if exc.status == 404 and details.get("kind") == "namespaces":
            raise StageError(
                f"train.dask.namespace: namespace {cfg.namespace!r} not found on {api.host}"
            ) from exc
        if exc.status == 404:
            raise StageError(
                f"train.dask: the DaskCluster CRD ({CRD_NAME}) is not installed on {api.host} "
                "(apply manifests/dask)"
            ) from exc
        raise StageError(f"train.dask: {api.host} refused DaskCluster {name}: {_reason(exc)}") from exc


def _get_cluster(api: _Api, cfg: DaskConfig, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        obj: dict[str, Any] = _call(api, f"get DaskCluster {cfg.namespace}/{name}",
                                    api.custom.get_namespaced_custom_object,
                                    GROUP, VERSION, cfg.namespace, PLURAL, name)  # fmt: skip
        return obj
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise StageError(f"train.dask: get DaskCluster {cfg.namespace}/{name}: {_reason(exc)}") from exc


def _scheduler_service(api: _Api, cfg: DaskConfig, name: str) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return _call(api, f"get Service {cfg.namespace}/{name}-scheduler", api.core.read_namespaced_service,
                     f"{name}-scheduler", cfg.namespace)  # fmt: skip
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise StageError(f"train.dask: get Service {cfg.namespace}/{name}-scheduler: {_reason(exc)}") from exc


def _pod_phases(api: _Api, cfg: DaskConfig, name: str) -> str:
    """``pod=Phase`` for the cluster's pods (for the timeout message); best effort."""
    try:
        pods = _call(api, "list pods", api.core.list_namespaced_pod, cfg.namespace,
                     label_selector=f"dask.org/cluster-name={name}")  # fmt: skip
    except Exception:  # the message is already an error; the pod list only adds detail
        return "pods unknown"
    return ", ".join(f"{p.metadata.name}={p.status.phase}" for p in pods.items) or "no pods"


def _wait_running(api: _Api, cfg: DaskConfig, name: str) -> Any:
    """Poll until the operator has brought the cluster up; returns its scheduler Service."""
    deadline = time.monotonic() + cfg.timeout_s
    phase = None
    while True:
        obj = _get_cluster(api, cfg, name)
        if obj is None:
            raise StageError(f"train.dask: DaskCluster {cfg.namespace}/{name} was deleted while starting")
        phase = (obj.get("status") or {}).get("phase")
        if phase == "Error":
            raise StageError(f"train.dask: the operator marked DaskCluster {cfg.namespace}/{name} as Error")
        # "Pending" is set after the operator created the scheduler Service and the worker group; "Running"
        # when it saw that Service's status. Both count: the operator's Pending write can land after its
        # Running one and the cluster then stays "Pending" while up (dask/dask-kubernetes#968, seen here on
        # the local control plane). The real readiness is the Client's wait for the workers that follows.
        if phase in ("Pending", "Running") and (service := _scheduler_service(api, cfg, name)) is not None:
            return service
        if time.monotonic() > deadline:
            hint = (
                "no operator reported on it (is the Dask Kubernetes operator running? manifests/dask)"
                if phase is None
                else f"phase {phase}; {_pod_phases(api, cfg, name)}"
            )
            raise StageError(
                f"train.dask.timeout_s: DaskCluster {cfg.namespace}/{name} not up after "
                f"{cfg.timeout_s:g}s: {hint}"
            )
        time.sleep(POLL_S)


def _delete(api: _Api, cfg: DaskConfig, name: str) -> None:
    """Foreground-delete the DaskCluster and wait until it (and so every dependent) is gone."""
    from kubernetes.client.exceptions import ApiException

    what = f"DaskCluster {cfg.namespace}/{name}"
    try:
        _call(api, f"delete {what}", api.custom.delete_namespaced_custom_object,
              GROUP, VERSION, cfg.namespace, PLURAL, name, propagation_policy="Foreground")  # fmt: skip
    except ApiException as exc:
        if exc.status == 404:
            return
        raise StageError(f"train.dask: delete {what}: {_reason(exc)}") from exc
    deadline = time.monotonic() + cfg.timeout_s
    while _get_cluster(api, cfg, name) is not None:
        if time.monotonic() > deadline:
            raise StageError(
                f"train.dask: {what} still present {cfg.timeout_s:g}s after its deletion "
                "(the garbage collector has not removed its pods)"
            )
        time.sleep(POLL_S)


def scheduler_address(service: Any, name: str, namespace: str) -> str:
    """The scheduler Service's cluster IP, the address its DNS name resolves to in the cluster: no lookup
    to fail, and also reachable from a node itself. A headless Service has none: its DNS name then."""
    cluster_ip = getattr(getattr(service, "spec", None), "cluster_ip", None)
    if cluster_ip and cluster_ip != "None":
        return f"tcp://{cluster_ip}:{SCHEDULER_PORT}"
    return f"tcp://{name}-scheduler.{namespace}.svc:{SCHEDULER_PORT}"


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises (so the deletion in ``finally`` runs) also where nothing else handles it: a KFP task
    process has Python's default SIGTERM, which ends the interpreter without running ``finally``. Where a
    handler is already installed (the clinrisk CLI's), that one stays."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return
    from clinrisk.interrupts import raise_interrupted, signal_handlers

    with signal_handlers(raise_interrupted):
        yield


@contextmanager
def kubernetes_dask_cluster(cfg: DaskConfig, n_workers: int) -> Iterator[str]:
    """A DaskCluster for the ``with`` block; yields the scheduler address. Deleted on every way out."""
    api = _Api(cfg)
    name = cluster_name(cfg.name_prefix)
    with _sigterm_unwinds():
        _create(api, cfg, daskcluster_manifest(name, cfg, n_workers))  # a refused create leaves nothing
        failed = True
        try:
            service = _wait_running(api, cfg, name)
            yield cfg.scheduler_address or scheduler_address(service, name, cfg.namespace)
            failed = False
        finally:
            try:
                _delete(api, cfg, name)
            except StageError as exc:
                if not failed:
                    raise
                # The fit's own error is the one to report; the leftover is named, not hidden.
                print(f"warning: {exc}", file=sys.stderr)
