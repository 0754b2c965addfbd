"""The cluster's data-path services, started for real on loopback with the arguments the chart gives them.

- PostgreSQL (Debian's binaries) as MLflow's backend store, with the chart's database and user.
- MinIO, built from its Go module (scripts/platform/build-minio.sh), with install-minio.sh's credentials
  and bucket.
- The MLflow tracking server: args and env taken from ``helm template charts/mlflow`` (the Deployment's
  container), changed only where loopback needs it: ``--host`` → 127.0.0.1, ``--port`` → a free port,
  the Postgres host:port → the local one, and the Secret values filled in.
- :class:`ClusterDns`: a small HTTP forward proxy (``HTTP_PROXY``) that routes the in-cluster Service names
  (``mlflow.mlflow.svc.cluster.local:5000``, ``minio.minio.svc.cluster.local:9000``) to the loopback ports.
  Clients keep the cluster's URLs and send the cluster's ``Host`` header unchanged — what cluster DNS plus
  a Service would do — with no /etc/hosts edit. psycopg2 does not use HTTP proxies, so only the Postgres
  address is rewritten.

A service that fails to start raises :class:`ServiceError` naming it, with the tail of its log.
"""

from __future__ import annotations

import http.client
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO = Path(__file__).resolve().parents[2]
MLFLOW_HOST = "mlflow.mlflow.svc.cluster.local:5000"
MINIO_HOST = "minio.minio.svc.cluster.local:9000"
MINIO_USER, MINIO_PASSWORD = "clinrisk", "clinrisk-minio-dev"  # scripts/k8s/install-minio.sh defaults
BUCKET = "mlflow"  # install-minio.sh's `mc mb local/mlflow`
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade"}  # fmt: skip


class ServiceError(RuntimeError):
    def __init__(self, name: str, problem: str, log: Path | None = None) -> None:
        tail = ""
        if log is not None and log.is_file():
            tail = (
                "\n--- " + str(log) + " (last 40 lines) ---\n" + "\n".join(log.read_text().splitlines()[-40:])
            )
        super().__init__(f"service {name}: {problem}{tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    info: dict[str, Any] = field(default_factory=dict)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ServiceError(self.name, f"exited with status {self.proc.returncode}", self.log)

    def stop(self) -> None:
        """Stop the whole process group (mlflow's uvicorn workers, postgres under runuser), not just the head."""
        import signal

        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)  # start_new_session=True: the group id is the head's pid
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(0.5)
            try:  # children (uvicorn workers) may outlive the head briefly
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break


def start(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Service:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        try:
            proc = subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        except OSError as exc:
            raise ServiceError(name, f"cannot start {argv[0]}: {exc}") from None
    return Service(name, proc, log)


def wait_until(svc: Service, probe: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        svc.check_alive()
        try:
            if probe():
                return
        except Exception as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise ServiceError(svc.name, f"not ready after {timeout_s:.0f} s ({what}; last: {last})", svc.log)


def _wait_or_stop(svc: Service, probe: Any, what: str, timeout_s: float) -> None:
    try:
        wait_until(svc, probe, what, timeout_s)
    except BaseException:
        svc.stop()
        raise


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(req, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


# ---- cluster DNS: in-cluster names → loopback ports ---------------------------------------------------


class ClusterDns:
    """HTTP forward proxy routing ``host:port`` names to loopback addresses, Host header untouched."""

    def __init__(self, routes: dict[str, tuple[str, int]]) -> None:
        self.routes = routes
        dns = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                parts = urlsplit(self.path)
                host = parts.netloc or self.headers.get("Host", "")
                target = dns.routes.get(host)
                if target is None:
                    body = f"cluster DNS: no route for {host!r}".encode()
                    self.send_response(502)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                path = parts.path + (f"?{parts.query}" if parts.query else "") if parts.netloc else self.path
                data = self._body()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    headers["Content-Length"] = str(len(data))
                conn = http.client.HTTPConnection(*target, timeout=300)
                try:
                    conn.putrequest(self.command, path or "/", skip_host=True, skip_accept_encoding=True)
                    for k, v in headers.items():
                        conn.putheader(k, v)
                    conn.endheaders(data if data or self.command in ("PUT", "POST") else None)
                    resp = conn.getresponse()
                    payload = resp.read()
                except (OSError, http.client.HTTPException) as exc:  # upstream died: a gateway error
                    body = f"cluster DNS: {host} -> {target}: {type(exc).__name__}: {exc}".encode()
                    self.send_response(502)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() in HOP_BY_HOP or (k.lower() == "content-length" and self.command != "HEAD"):
                        continue
                    self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def env(self) -> dict[str, str]:
        """Proxy variables for clients (requests, boto3): cluster names via the proxy, loopback direct."""
        return {"HTTP_PROXY": self.url, "http_proxy": self.url, "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost"}  # fmt: skip

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- PostgreSQL --------------------------------------------------------------------------------------


def postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if not found:
        raise ServiceError(
            "postgres", f"{name} not found (install Debian's postgresql; make test-platform does)"
        )
    return str(found)


def start_postgres(work: Path, database: str, user: str, password: str) -> Service:
    """initdb + postgres on 127.0.0.1 (as the `postgres` account when run as root: it refuses root)."""
    data = Path(tempfile.mkdtemp(prefix="clinrisk-pg-"))
    sock = Path(tempfile.mkdtemp(prefix="clinrisk-pgsock-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        account = "postgres" if _has_account("postgres") else "nobody"
        shutil.chown(data, account)
        shutil.chown(sock, account)
        as_user = ["runuser", "-u", account, "--"]
    init_log = work / "postgres-initdb.log"
    with open(init_log, "wb") as fh:
        rc = subprocess.call([*as_user, postgres_bin("initdb"), "-D", str(data), "-U", "postgres",
                              "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"],
                             stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
    if rc != 0:
        raise ServiceError("postgres", f"initdb exited with {rc}", init_log)
    port = free_port()
    svc = start("postgres", [*as_user, postgres_bin("postgres"), "-D", str(data), "-h", "127.0.0.1",
                             "-p", str(port), "-k", str(sock)], work / "postgres.log")  # fmt: skip
    psql = [*as_user, postgres_bin("psql"), "-h", str(sock), "-p", str(port), "-U", "postgres", "-v",
            "ON_ERROR_STOP=1", "-q"]  # fmt: skip

    def ready() -> bool:
        return subprocess.run([*psql, "-c", "select 1"], capture_output=True).returncode == 0

    svc.info = {"port": port, "data": data, "socket": sock}
    try:
        wait_until(svc, ready, "psql select 1", 60)
        # What the chart's postgres container does from POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB.
        sql = [f"create role {user} login password '{password}'", f"create database {database} owner {user}"]
        out = subprocess.run([*psql, "-c", sql[0], "-c", sql[1]], capture_output=True, text=True)
        if out.returncode != 0:
            raise ServiceError("postgres", f"creating role/database failed: {out.stderr.strip()}", svc.log)
    except BaseException:
        svc.stop()
        raise
    return svc


def _has_account(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# ---- MinIO -------------------------------------------------------------------------------------------


def start_minio(work: Path, binary: str) -> Service:
    """install-minio.sh's container (`server /data --console-address :9001`, root credentials), loopback."""
    port, console = free_port(), free_port()
    data = work / "minio-data"
    data.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MINIO_ROOT_USER": MINIO_USER, "MINIO_ROOT_PASSWORD": MINIO_PASSWORD,
           "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}  # fmt: skip
    svc = start("minio", [binary, "server", str(data), "--address", f"127.0.0.1:{port}",
                          "--console-address", f"127.0.0.1:{console}"], work / "minio.log", env)  # fmt: skip
    _wait_or_stop(svc, lambda: http_status(f"http://127.0.0.1:{port}/minio/health/ready", timeout=5)[0] == 200,
                  "/minio/health/ready", 90)  # fmt: skip
    svc.info = {"port": port, "data": data}
    return svc


# ---- MLflow ------------------------------------------------------------------------------------------


def chart_mlflow_container(helm: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The mlflow container of ``helm template mlflow charts/mlflow -n mlflow`` (as install-mlflow.sh)."""
    argv = [helm, "template", "mlflow", str(REPO / "charts/mlflow"), "--namespace", "mlflow"]
    for k, v in (values or {}).items():
        argv += ["--set", f"{k}={v}"]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise ServiceError("mlflow", f"helm template charts/mlflow failed: {out.stderr.strip()}")
    for doc in yaml.safe_load_all(out.stdout):
        if doc and doc.get("kind") == "Deployment" and doc["metadata"]["name"] == "mlflow":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            return dict(container)
    raise ServiceError("mlflow", "helm template charts/mlflow rendered no Deployment 'mlflow'")


def mlflow_server_argv(
    container: dict[str, Any], port: int, pg_port: int, secret_values: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The container's args/env made runnable on loopback (the image's ENTRYPOINT is `mlflow server`)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret_values[f"{ref['name']}/{ref['key']}"]
    args: list[str] = []
    for arg in container["args"]:
        if arg.startswith("--host="):
            arg = "--host=127.0.0.1"
        elif arg.startswith("--port="):
            arg = f"--port={port}"
        for name, value in env.items():  # Kubernetes' $(VAR) expansion
            arg = arg.replace(f"$({name})", value)
        arg = arg.replace("@mlflow-postgres:5432/", f"@127.0.0.1:{pg_port}/")
        args.append(arg)
    return ["mlflow", "server", *args], env


def start_mlflow(
    work: Path, python: str, container: dict[str, Any], pg_port: int, secret_values: dict[str, str],
    extra_env: dict[str, str], name: str = "mlflow",
) -> Service:  # fmt: skip
    port = free_port()
    argv, env = mlflow_server_argv(container, port, pg_port, secret_values)
    bin_dir = str(Path(python).parent)
    full_env = {**os.environ, **extra_env, **env, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    svc = start(name, [str(Path(bin_dir) / "mlflow"), *argv[1:]], work / f"{name}.log", full_env)
    _wait_or_stop(
        svc, lambda: http_status(f"http://127.0.0.1:{port}/health", timeout=5)[0] == 200, "/health", 600
    )
    svc.info = {"port": port, "argv": argv, "env": env}
    return svc


def new_password() -> str:
    return secrets.token_hex(12)
