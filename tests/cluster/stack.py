"""The real KServe and Knative Serving controllers as local processes against the local control plane.

- KServe v0.20.0 manager (github.com/kserve/kserve cmd/manager) and Knative Serving 1.19.0 controller,
  webhook and autoscaler (knative.dev/serving v0.46.0), built by tools/controlplane/build.sh.
- They run under their own service accounts' tokens, so the RBAC of the pinned manifests is what they get.
- Their admission webhooks are registered through the manifests' own Service references: the Services lose
  their selector and get manual Endpoints on this host's non-loopback address (endpoint IPs may not be
  loopback), which kube-apiserver dials because it runs with --enable-aggregator-routing=true. The Knative
  webhook writes its own certificate and CA bundle (as in a cluster); for KServe, which relies on
  cert-manager, a serving certificate is signed by the control plane's CA and the CA bundle is set into its
  webhook configurations (what cert-manager's CA injector does).
- The in-cluster Deployments of these controllers are scaled to 0: the same binaries run outside instead.

There is no networking data plane here (no Envoy, no Kourier gateway), so nothing could make a Knative
KIngress ready. :class:`KIngressStatusStandIn` is a stand-in for that data plane only: it marks each
KIngress of class kourier as ready for its current generation and publishes the load-balancer addresses
Kourier would. Routes, Revisions, Configurations, PodAutoscalers and the InferenceService are all written
by the real controllers; the tests assert on what they wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.conftest import REPO, Cluster

BUILD_SH = REPO / "tools" / "controlplane" / "build.sh"
KNATIVE_WEBHOOK_PORT = 8443
KSERVE_WEBHOOK_PORT = 9443
KOURIER_PUBLIC = "kourier.kourier-system.svc.cluster.local"
KOURIER_PRIVATE = "kourier-internal.kourier-system.svc.cluster.local"


class StackError(RuntimeError):
    """A component could not be built or started; the message names it and its log file."""


def host_ip() -> str:
    """This host's first non-loopback IPv4 address (webhook endpoints may not be loopback)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1].split("/")[0]
    raise StackError("no non-loopback IPv4 address on this host: webhook endpoints cannot be registered")


def build(component: str) -> Path:
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/local/go/bin"}
    proc = subprocess.run(
        [str(BUILD_SH), component], capture_output=True, text=True, env=env, timeout=7200, check=False
    )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        raise StackError(lines[-1] if lines else f"build {component}: {proc.stderr.strip()[-500:]}")
    out = subprocess.run([str(BUILD_SH), "--bindir", component], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


@dataclass
class KIngressStatusStandIn:
    """Stand-in for the networking data plane ONLY (see the module docstring): marks KIngresses ready."""

    cluster: Cluster
    interval_s: float = 1.0
    marked: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _status(self, generation: int) -> dict[str, Any]:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conds = [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("LoadBalancerReady", "NetworkConfigured", "Ready")
        ]
        return {
            "status": {
                "observedGeneration": generation,
                "conditions": conds,
                "publicLoadBalancer": {"ingress": [{"domainInternal": KOURIER_PUBLIC}]},
                "privateLoadBalancer": {"ingress": [{"domainInternal": KOURIER_PRIVATE}]},
            }
        }

    def sweep(self) -> None:
        proc = self.cluster.kubectl(
            "get", "ingresses.networking.internal.knative.dev", "-A", "-o", "json", check=False
        )
        if proc.returncode != 0:
            return
        for ing in json.loads(proc.stdout)["items"]:
            meta = ing["metadata"]
            gen = int(meta.get("generation", 1))
            key = f"{meta['namespace']}/{meta['name']}"
            if (ing.get("status") or {}).get("observedGeneration") == gen and self.marked.get(key) == gen:
                continue
            self.cluster.kubectl(
                "patch", "ingresses.networking.internal.knative.dev", meta["name"], "-n", meta["namespace"],
                "--subresource", "status", "--type", "merge", "-p", json.dumps(self._status(gen)), check=False,
            )  # fmt: skip
            self.marked[key] = gen

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep()
            except Exception:
                continue

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kingress-status-standin", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass
class ServingStack:
    cluster: Cluster
    state: Path
    ip: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    standin: KIngressStatusStandIn | None = None

    # ------------------------------------------------------------------ helpers
    def log(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    def _token_kubeconfig(self, namespace: str, account: str) -> Path:
        token = self.cluster.kubectl("create", "token", account, "-n", namespace, "--duration", "6h").stdout
        cfg = yaml.safe_load(self.cluster.kubeconfig.read_text())
        cfg["users"] = [{"name": cfg["users"][0]["name"], "user": {"token": token.strip()}}]
        path = self.state / f"{namespace}-{account}.kubeconfig"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def _endpoints(self, namespace: str, service: str, ports: list[dict[str, Any]]) -> None:
        """Drop the Service's selector and point it at this host (the process serving it runs here)."""
        self.cluster.kubectl(
            "patch", "service", service, "-n", namespace, "--type", "json",
            "-p", '[{"op": "remove", "path": "/spec/selector"}]', check=False,
        )  # fmt: skip
        eps = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": service, "namespace": namespace},
            "subsets": [{"addresses": [{"ip": self.ip}], "ports": ports}],
        }
        self.cluster.kubectl("delete", "endpoints", service, "-n", namespace, "--ignore-not-found")
        self.cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(eps)
        )

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.log(name).parent.mkdir(parents=True, exist_ok=True)
        with self.log(name).open("wb") as out:
            self.procs[name] = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
            )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = self.log(name).read_text(errors="replace").strip().splitlines()[-1:]
                raise StackError(
                    f"{name}: exited with {proc.returncode} (log: {self.log(name)}): {' '.join(tail)[:300]}"
                )

    def wait(self, what: str, fn: Any, timeout_s: float = 300) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            result = fn()
            if result:
                return result
            if time.monotonic() > deadline:
                raise StackError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            time.sleep(2)

    # ------------------------------------------------------------------ bring-up
    def _kserve_cert(self) -> Path:
        """Serving cert for kserve-webhook-server-service.kserve.svc, signed by the control plane CA."""
        pki = self.cluster.state_dir / "pki"
        certs = self.state / "kserve-tmp" / "k8s-webhook-server" / "serving-certs"
        certs.mkdir(parents=True, exist_ok=True)
        dns = "kserve-webhook-server-service.kserve.svc"
        ext = certs / "ext.cnf"
        ext.write_text(f"subjectAltName=DNS:{dns},DNS:{dns}.cluster.local\nextendedKeyUsage=serverAuth\n")
        run = ["openssl"]
        subprocess.run(
            [*run, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={dns}",
             "-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.csr")],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [*run, "x509", "-req", "-in", str(certs / "tls.csr"), "-CA", str(pki / "ca.crt"),
             "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "30", "-extfile", str(ext),
             "-out", str(certs / "tls.crt")],
            check=True, capture_output=True,
        )  # fmt: skip
        return pki / "ca.crt"

    def start(self, platform: dict[str, list[dict[str, Any]]]) -> None:
        self.ip = host_ip()
        kn = build("knative")
        ks = build("kserve")
        for ns in ("knative-serving", "kserve"):
            self.cluster.kubectl("scale", "deployment", "--all", "--replicas", "0", "-n", ns)
        self._endpoints(
            "knative-serving", "webhook", [{"name": "https-webhook", "port": KNATIVE_WEBHOOK_PORT}]
        )
        self._endpoints("kserve", "kserve-webhook-server-service", [{"port": KSERVE_WEBHOOK_PORT}])

        knative_kc = str(self._token_kubeconfig("knative-serving", "controller"))
        common = {"SYSTEM_NAMESPACE": "knative-serving", "KUBECONFIG": knative_kc,
                  "CONFIG_LOGGING_NAME": "config-logging", "CONFIG_OBSERVABILITY_NAME": "config-observability",
                  "METRICS_DOMAIN": "knative.dev/internal/serving"}  # fmt: skip
        self._start(
            "knative-webhook",
            [str(kn / "webhook"), "--kubeconfig", knative_kc],
            {**common, "POD_NAME": "webhook-local", "WEBHOOK_NAME": "webhook",
             "WEBHOOK_PORT": str(KNATIVE_WEBHOOK_PORT), "METRICS_PROMETHEUS_PORT": "19090",
             "PROFILING_PORT": "18008"},
        )  # fmt: skip
        knative_hooks = [
            o
            for o in platform["manifests/platform/knative"]
            if o["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        ]
        refused = self.cluster.apply_objects(knative_hooks, "knative webhooks")
        if refused:
            raise StackError("; ".join(refused))

        def knative_webhook_ready() -> bool:
            hooks = self.cluster.get(
                "validatingwebhookconfiguration", "validation.webhook.serving.knative.dev"
            )
            return all(w["clientConfig"].get("caBundle") for w in hooks["webhooks"])

        self.wait("the Knative webhook to register its CA bundle", knative_webhook_ready, 180)

        ca = self._kserve_cert().read_bytes()
        import base64

        ca_b64 = base64.b64encode(ca).decode()
        kserve_hooks = []
        for o in platform["manifests/platform/kserve"]:
            if o["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
                o = json.loads(json.dumps(o))
                for w in o["webhooks"]:
                    w["clientConfig"]["caBundle"] = ca_b64
                kserve_hooks.append(o)
        # Registered before the manager starts: pods and InferenceServices created from now on go through
        # KServe's webhooks (fail-closed until it listens; the ReplicaSet controller retries).
        refused = self.cluster.apply_objects(kserve_hooks, "kserve webhooks")
        if refused:
            raise StackError("; ".join(refused))
        self._start(
            "kserve-manager",
            [str(ks / "manager"), "--metrics-addr=127.0.0.1:18080", "--health-probe-addr=127.0.0.1:18081",
             f"--webhook-port={KSERVE_WEBHOOK_PORT}"],
            {"POD_NAMESPACE": "kserve", "TMPDIR": str(self.state / "kserve-tmp"),
             "KUBECONFIG": str(self._token_kubeconfig("kserve", "kserve-controller-manager"))},
        )  # fmt: skip

        def kserve_ready() -> bool:
            r = subprocess.run(
                ["curl", "-fsS", "http://127.0.0.1:18081/readyz"], capture_output=True, check=False
            )
            return r.returncode == 0

        self.wait("the KServe manager's readiness probe", kserve_ready, 240)
        self._start(
            "knative-controller",
            [str(kn / "controller"), "--kubeconfig", knative_kc],
            {**common, "POD_NAME": "controller-local", "METRICS_PROMETHEUS_PORT": "19091",
             "PROFILING_PORT": "18009"},
        )  # fmt: skip
        self._start(
            "knative-autoscaler",
            [str(kn / "autoscaler"), "--kubeconfig", knative_kc],
            {**common, "POD_NAME": "autoscaler-local", "POD_IP": self.ip, "METRICS_PROMETHEUS_PORT": "19092",
             "PROFILING_PORT": "18010"},
        )  # fmt: skip

        self.standin = KIngressStatusStandIn(self.cluster)
        self.standin.start()

    def stop(self) -> None:
        if self.standin is not None:
            self.standin.stop()
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
