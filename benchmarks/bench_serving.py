"""Serving benchmark: the clinrisk KServe predictor (raw patient history -> features -> probability) side by
side, in one run, with (a) the same LightGBM model served from PRECOMPUTED features by MLServer's LightGBM
runtime - which prices the validation + feature-building path - and (b) a no-op model on the same KServe
ModelServer stack - which prices KServe's own HTTP path (the floor of any KServe predictor here).

Per server, with keep-alive HTTP/1.1 connections (a minimal socket client, so that the client steals as
little of the shared CPUs as possible): single-instance latency p50/p99, 32-instance batch latency p50/p99,
throughput at concurrency 8 for ``--duration`` seconds, the error count, and the server's CPU time per
request during the throughput run (robust to other load on the machine). For clinrisk it also prints an
in-process breakdown (validation, the feature query, model call) that shows where the time goes. Goals
(2 cores, one worker): p50 <= 3 ms, p99 <= 10 ms single instance, >= 400 req/s at concurrency 8, 0 errors.

MLServer 1.7.1 pins an older FastAPI than KServe, so it lives in its own virtual environment, created on
first use from the exact pins in ``benchmarks/mlserver-requirements.txt``; by hand that is:

    python -m venv /tmp/serving/mlserver-venv
    /tmp/serving/mlserver-venv/bin/pip install -r benchmarks/mlserver-requirements.txt

Usage:

    .venv/bin/python benchmarks/bench_serving.py                       # 60 s throughput per server
    .venv/bin/python benchmarks/bench_serving.py --duration 10 --latency-duration 5   # quick check
    .venv/bin/python benchmarks/bench_serving.py --bundle outputs/tiny/bundle --skip-mlserver
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MLSERVER_VENV = Path(os.environ.get("CLINRISK_MLSERVER_VENV", "/tmp/serving/mlserver-venv"))
MLSERVER_REQUIREMENTS = REPO / "benchmarks" / "mlserver-requirements.txt"
BATCH = 32
CONCURRENCY = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------ HTTP client


class KeepAliveClient:
    """One persistent HTTP/1.1 connection posting a pre-encoded body; returns the status code.

    Enough for uvicorn's responses (Content-Length framed); any other framing counts as an error."""

    def __init__(self, port: int, path: str, body: bytes) -> None:
        self.port = port
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        ).encode() + body
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        return s

    def post(self) -> int:
        try:
            if self.sock is None:
                self.sock = self._connect()
            self.sock.sendall(self.request)
            while b"\r\n\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.buf += chunk
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length = next(
                (
                    int(v)
                    for k, _, v in (ln.partition(b":") for ln in lines[1:])
                    if k.lower() == b"content-length"
                ),
                None,
            )
            if length is None:
                raise ConnectionError("no content-length")
            while len(rest) < length:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                rest += chunk
            self.buf = rest[length:]
            return status
        except (OSError, ValueError, IndexError):
            self.close()
            return 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# ------------------------------------------------------------------------------------ measuring


def proc_tree_cpu_s(pid: int) -> float:
    """User+system CPU seconds of ``pid`` and all its descendants (from /proc)."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parent[int(d)] = int(fields[1])
        ticks[int(d)] = int(fields[11]) + int(fields[12])
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(ticks.get(p, 0) for p in tree) / CLK_TCK


def latency_run(client: KeepAliveClient, seconds: float) -> dict[str, Any]:
    """Sequential requests on one keep-alive connection: latency percentiles (ms) and errors."""
    for _ in range(20):  # warm-up: connection, caches, allocator
        client.post()
    lat: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        ok = client.post() == 200
        lat.append(time.perf_counter() - t)
        errors += not ok
    client.close()
    a = np.asarray(lat) * 1000
    return {
        "n": int(a.size),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "errors": errors,
    }


def throughput_run(
    make: Callable[[], KeepAliveClient], seconds: float, workers: int, pid: int
) -> dict[str, Any]:
    """``workers`` threads, each with its own keep-alive connection, for ``seconds``: req/s, errors and the
    server's CPU milliseconds per request."""
    counts = [0] * workers
    errs = [0] * workers
    start = threading.Barrier(workers + 1)
    stop = threading.Event()

    def work(k: int) -> None:
        c = make()
        c.post()
        start.wait()
        while not stop.is_set():
            ok = c.post() == 200
            counts[k] += 1
            errs[k] += not ok
        c.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    start.wait()
    cpu0, t0 = proc_tree_cpu_s(pid), time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, proc_tree_cpu_s(pid) - cpu0
    n = sum(counts)
    return {
        "req_per_s": n / elapsed,
        "requests": n,
        "errors": sum(errs),
        "server_cpu_ms_per_req": 1000 * cpu / n if n else math.nan,
    }


def measure(
    name: str,
    port: int,
    path: str,
    one: bytes,
    many: bytes,
    pid: int,
    args: argparse.Namespace,
    full_history: bytes | None = None,
) -> dict[str, Any]:
    """Latency (single, batch of 32, and optionally one full-history instance) and c8 throughput."""
    cpu0 = proc_tree_cpu_s(pid)
    single = latency_run(KeepAliveClient(port, path, one), args.latency_duration)
    single["server_cpu_ms_per_req"] = 1000 * (proc_tree_cpu_s(pid) - cpu0) / (single["n"] + 20)
    out = {
        "single": single,
        "batch32": latency_run(KeepAliveClient(port, path, many), args.latency_duration),
        "concurrency8": throughput_run(
            lambda: KeepAliveClient(port, path, one), args.duration, CONCURRENCY, pid
        ),
    }
    if full_history is not None:
        out["single_full_history"] = latency_run(
            KeepAliveClient(port, path, full_history), args.latency_duration
        )
        f = out["single_full_history"]
        print(
            f"{name:9s} single full-history instance ({args.full_history_years} records):"
            f" p50 {f['p50_ms']:7.2f} ms p99 {f['p99_ms']:7.2f} ms | errors {f['errors']}",
            flush=True,
        )
    s, b, c = out["single"], out["batch32"], out["concurrency8"]
    out["errors"] = (
        s["errors"] + b["errors"] + c["errors"] + out.get("single_full_history", {}).get("errors", 0)
    )
    print(
        f"{name:9s} single p50 {s['p50_ms']:7.2f} ms p99 {s['p99_ms']:7.2f} ms"
        f" (server CPU {s['server_cpu_ms_per_req']:5.2f} ms/req) | batch32 p50 {b['p50_ms']:7.2f} ms"
        f" p99 {b['p99_ms']:7.2f} ms | c8 {c['req_per_s']:7.1f} req/s, server CPU"
        f" {c['server_cpu_ms_per_req']:6.2f} ms/req | errors {out['errors']}",
        flush=True,
    )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"http://127.0.0.1:{port}{path} not ready after {timeout_s:.0f}s")


def stop_process(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_server(
    name: str, cmd: list[str], env: dict[str, str], ready_path: str, port: int, logdir: Path
) -> subprocess.Popen[Any]:
    with open(logdir / f"{name}.log", "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(port, ready_path)
    except RuntimeError:
        stop_process(proc)
        raise
    return proc


# ------------------------------------------------------------------------------------------ servers


def bench_clinrisk(
    bundle: Path, instances: list[dict[str, Any]], args: argparse.Namespace, logdir: Path
) -> dict[str, Any]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "clinrisk",
        "serve",
        "--bundle",
        str(bundle),
        "--set",
        f"serving.http_port={port}",
        "--set",
        f"serving.feature_engine={args.feature_engine}",
    ]
    env = dict(os.environ)
    if args.polars_threads:
        env["POLARS_MAX_THREADS"] = str(args.polars_threads)
    proc = run_server("clinrisk", cmd, env, "/v1/models/clinrisk", port, logdir)
    try:
        one = json.dumps({"instances": instances[:1]}).encode()
        many = json.dumps({"instances": instances[:BATCH]}).encode()
        full = json.dumps(
            {"instances": [full_history_instance(instances[0], args.full_history_years)]}
        ).encode()
        return measure("clinrisk", port, "/v1/models/clinrisk:predict", one, many, proc.pid, args, full)
    finally:
        stop_process(proc)


def full_history_instance(instance: dict[str, Any], n_records: int) -> dict[str, Any]:
    """``instance`` with its history extended backwards (copies of its oldest record) to ``n_records``
    years: the size of a request that sends a patient's full history."""
    import copy

    inst = copy.deepcopy(instance)
    hist = inst["history"]
    while len(hist) < n_records:
        older = copy.deepcopy(hist[0])
        older["year"] -= 1
        hist.insert(0, older)
    inst["entry_year"] = min(inst["entry_year"], hist[0]["year"])
    inst["birth_year"] = min(inst["birth_year"], inst["entry_year"] - 18)
    return inst


def bench_attack(bundle: Path, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    """A ``--attack-mb`` body sent to :predict (declared in Content-Length, then chunked) while liveness
    is probed every 20 ms: time to the 413, body bytes the server took before it, probe p50/p99 during
    the attack next to probe p99 without one, and the server's RSS growth (default serving limits)."""
    import psutil

    from clinrisk.serving.attack import Prober, oversized_body

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "clinrisk",
        "serve",
        "--bundle",
        str(bundle),
        "--set",
        f"serving.http_port={port}",
    ]
    proc = run_server("clinrisk-attack", cmd, dict(os.environ), "/v1/models/clinrisk", port, logdir)
    live = f"http://127.0.0.1:{port}/v2/health/live"
    total = int(args.attack_mb * 1024 * 1024)
    out: dict[str, Any] = {"attack_bytes": total}
    try:
        idle = Prober(live)
        idle.start()
        time.sleep(3.0)
        idle.stop()
        out["probe_idle_p99_ms"] = float(np.percentile(idle.latencies, 99) * 1e3)
        for mode in ("declared", "chunked"):
            rss0 = psutil.Process(proc.pid).memory_info().rss
            prober = Prober(live, pid=proc.pid)
            prober.start()
            time.sleep(0.5)
            res = oversized_body(
                "127.0.0.1", port, "/v1/models/clinrisk:predict", total, chunked=mode == "chunked"
            )
            time.sleep(0.5)
            prober.stop()
            lat = np.asarray(prober.latencies) * 1e3
            out[mode] = {
                "status": res.status,
                "ms_to_413": res.seconds * 1e3,
                "mb_sent_before_413": res.bytes_sent / 2**20,
                "probe_p50_ms": float(np.percentile(lat, 50)),
                "probe_p99_ms": float(np.percentile(lat, 99)),
                "probe_failures": prober.failures,
                "rss_growth_mb": (prober.max_rss - rss0) / 2**20,
            }
            m = out[mode]
            print(
                f"attack {mode} {args.attack_mb:g} MB: HTTP {m['status']} after {m['ms_to_413']:.1f} ms "
                f"({m['mb_sent_before_413']:.1f} MB sent), probe p50 {m['probe_p50_ms']:.1f} / p99 "
                f"{m['probe_p99_ms']:.1f} ms (idle p99 {out['probe_idle_p99_ms']:.1f} ms), "
                f"{m['probe_failures']} probe failures, RSS growth {m['rss_growth_mb']:.1f} MB",
                flush=True,
            )
    finally:
        stop_process(proc)
    return out


def noop_server(port: int) -> None:
    """The clinrisk app (same routes, guard, handlers and metrics on KServe's dataplane and uvicorn) serving
    a model that answers every instance with a constant, without looking at it."""
    from clinrisk.config import ServingConfig
    from clinrisk.serving.kserve_import import import_kserve

    kserve = import_kserve()
    from clinrisk.serving.app import create_app
    from clinrisk.serving.server import model_server, run_http

    class Noop(kserve.Model):  # type: ignore[misc,name-defined]
        def load(self) -> bool:
            self.ready = True
            return True

        async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
            if isinstance(payload, bytes | bytearray):
                import orjson

                payload = orjson.loads(payload)
            n = len(payload.get("instances", [])) if isinstance(payload, dict) else 0
            return {"predictions": [{"probability": 0.5, "label": 0}] * n, "model_version": "noop"}

    cfg = ServingConfig(http_port=port)
    model = Noop("clinrisk")
    model.load()
    server = model_server(cfg, model)
    run_http(create_app(server, cfg, None), cfg, server)


def bench_noop(instances: list[dict[str, Any]], args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--noop-server", str(port)]
    proc = run_server("kserve-noop", cmd, dict(os.environ), "/v1/models/clinrisk", port, logdir)
    try:
        one = json.dumps({"instances": instances[:1]}).encode()
        many = json.dumps({"instances": instances[:BATCH]}).encode()
        return measure("kserve-0", port, "/v1/models/clinrisk:predict", one, many, proc.pid, args)
    finally:
        stop_process(proc)


def ensure_mlserver_venv() -> Path:
    """``<venv>/bin/mlserver``; the venv is created and the pinned requirements installed on first use."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if exe.exists():
        return exe
    print(f"creating {MLSERVER_VENV} from {MLSERVER_REQUIREMENTS.name} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
    pip = [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(MLSERVER_REQUIREMENTS)], check=True)
    return exe


def mlserver_body(rows: np.ndarray) -> bytes:
    """V2 inference request for ``rows`` (JSON has no NaN: missing values are sent as 0.0 - the same
    tree-traversal cost; the probabilities differ, they are not compared)."""
    x = np.where(np.isfinite(rows), rows, 0.0).astype(np.float64)
    inp = {"name": "input-0", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [inp]}).encode()


def bench_mlserver(bundle: Path, X: np.ndarray, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    exe = ensure_mlserver_venv()
    root = Path(tempfile.mkdtemp(prefix="mlserver-", dir=logdir))
    mdir = root / "models" / "clinrisk-lgb"
    mdir.mkdir(parents=True)
    (mdir / "model.txt").write_text((bundle / "model.txt").read_text())
    (mdir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "clinrisk-lgb",
                "implementation": "mlserver_lightgbm.LightGBMModel",
                "parameters": {"uri": "./model.txt"},
            }
        )
    )
    port = free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 0,  # inference in the server process: one worker, like the clinrisk predictor
    }
    (root / "models" / "settings.json").write_text(json.dumps(settings))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # Its best configuration for few-row requests: LightGBM's OpenMP team costs ~8 ms CPU per call on 2
    # busy cores (the clinrisk predictor pins num_threads=1 for the same reason).
    env["OMP_NUM_THREADS"] = "1"
    proc = run_server(
        "mlserver",
        [str(exe), "start", str(root / "models")],
        env,
        "/v2/models/clinrisk-lgb/ready",
        port,
        logdir,
    )
    try:
        path = "/v2/models/clinrisk-lgb/infer"
        return measure("mlserver", port, path, mlserver_body(X[:1]), mlserver_body(X[:BATCH]), proc.pid, args)
    finally:
        stop_process(proc)


# ------------------------------------------------------------------------------------ in-process split


def _stages(engine: Any, body: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    from clinrisk.serving.request import merge_requests

    req = engine.validate(body)
    raw = merge_requests([req])
    X = engine.current_features([req]).matrix
    return {
        "validate": lambda: engine.validate(body),
        "features_rowwise": lambda: engine.current_features([req], engine="rowwise"),
        "features_polars_query": lambda: engine.build_features(raw),
        "features_polars_plan_only": lambda: engine._plan()[0].explain(),
        "predict_proba": lambda: engine.bundle.predict_proba(X),
        "score_total": lambda: engine.score(body),
    }


def stage_breakdown(
    bundle: Path, instances: list[dict[str, Any]], reps: int = 30
) -> dict[str, dict[str, float]]:
    """Median CPU milliseconds (process time, all threads) of each scoring stage, in this process."""
    from clinrisk.config import ServingConfig
    from clinrisk.serving.inference import ServingEngine

    engine = ServingEngine.from_dir(bundle, ServingConfig(max_instances=256))
    out: dict[str, dict[str, float]] = {}
    for n in (1, BATCH):
        res: dict[str, float] = {}
        for name, f in _stages(engine, {"instances": instances[:n]}).items():
            f()
            ts = []
            for _ in range(reps):
                t = time.process_time()
                f()
                ts.append(time.process_time() - t)
            res[name] = 1000 * float(np.median(ts))
        out[f"{n}_instance"] = res
        print(
            f"in-process CPU ms, {n:2d} instance(s): " + ", ".join(f"{k} {v:.2f}" for k, v in res.items()),
            flush=True,
        )
    return out


# --------------------------------------------------------------------------------------------- main


def _valid(instance: dict[str, Any], window_years: int) -> bool:
    from clinrisk.serving.request import InvalidRequest, validate_request

    try:
        validate_request({"instances": [instance]}, window_years=window_years, max_instances=1)
    except InvalidRequest:
        return False
    return True


def make_inputs(bundle: Path | None, workdir: Path) -> tuple[Path, list[dict[str, Any]], np.ndarray]:
    """Bundle (a small one is trained if none is given), 64 instances and their precomputed features."""
    sys.path.insert(0, str(REPO))
    from tests.features.synth import synthetic_raw

    from clinrisk.config import ServingConfig
    from clinrisk.serving.inference import ServingEngine
    from clinrisk.serving.request import instances_from_raw

    if bundle is None:
        from tests.serving.conftest import build_bundle

        print("training a small benchmark bundle ...", flush=True)
        bundle = build_bundle(workdir)
    engine = ServingEngine.from_dir(bundle, ServingConfig(max_instances=256))
    x = engine.spec.window_years
    candidates = instances_from_raw(synthetic_raw(200, seed=5, id_offset=500_000), x, n=96)
    # The synthetic rows are not run through the validate stage: drop patients it would quarantine.
    instances = [i for i in candidates if _valid(i, x)][:64]
    X = engine.current_features([engine.validate({"instances": instances})]).matrix
    return bundle, instances, X


def history_skew(bundle: Path, n_patients: int = 400) -> dict[str, float]:
    """How much a client loses by sending only the last X+1 years instead of the full history: the same
    patients scored both ways in process (the full history reproduces the training features exactly)."""
    from tests.features.synth import synthetic_raw

    from clinrisk.config import ServingConfig
    from clinrisk.serving.inference import ServingEngine
    from clinrisk.serving.request import InvalidRequest, instances_from_raw

    engine = ServingEngine.from_dir(bundle, ServingConfig(max_instances=n_patients))
    x = engine.spec.window_years
    raw = synthetic_raw(n_patients, seed=21, id_offset=700_000)
    full = instances_from_raw(raw, x, full_history=True)
    short = instances_from_raw(raw, x)
    p_full, p_short = [], []
    for f, w in zip(full, short, strict=True):
        try:
            a = engine.score({"instances": [f]}).probabilities[0]
            b = engine.score({"instances": [w]}).probabilities[0]
        except InvalidRequest:  # synthetic rows are not validated: skip what validation would quarantine
            continue
        p_full.append(a)
        p_short.append(b)
    pf, ps = np.asarray(p_full), np.asarray(p_short)
    d = np.abs(pf - ps)
    tau = engine.threshold
    out = {
        "patients": float(pf.size),
        "share_different": float(np.mean(d > 0)),
        "median_abs_diff": float(np.median(d)),
        "p95_abs_diff": float(np.quantile(d, 0.95)),
        "share_label_flipped": float(np.mean((pf >= tau) != (ps >= tau))),
    }
    print(
        f"history skew (last X+1 years vs full history, {int(out['patients'])} patients): "
        f"{100 * out['share_different']:.1f} % of probabilities differ, median |dp| {out['median_abs_diff']:.4f}, "
        f"p95 {out['p95_abs_diff']:.4f}, labels flipped {100 * out['share_label_flipped']:.1f} %",
        flush=True,
    )
    return out


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument(
        "--duration", type=float, default=60.0, help="seconds of the concurrency-8 run per server"
    )
    ap.add_argument("--latency-duration", type=float, default=20.0, help="seconds of each latency run")
    ap.add_argument("--bundle", type=Path, default=None, help="bundle dir (default: train a small one)")
    ap.add_argument("--skip-mlserver", action="store_true", help="do not run MLServer")
    ap.add_argument("--skip-noop", action="store_true", help="do not run the no-op KServe model")
    ap.add_argument("--polars-threads", type=int, default=0, help="POLARS_MAX_THREADS for the predictor")
    ap.add_argument(
        "--feature-engine", choices=("rowwise", "polars"), default="rowwise", help="serving.feature_engine"
    )
    ap.add_argument(
        "--full-history-years", type=int, default=20, help="records in the full-history latency request"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--attack-mb", type=float, default=300.0, help="size of the oversized-body attack (MB)")
    ap.add_argument("--skip-attack", action="store_true", help="do not run the oversized-body attack")
    ap.add_argument("--noop-server", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.noop_server:
        noop_server(args.noop_server)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    bundle, instances, X = make_inputs(args.bundle, workdir)
    print(
        f"cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f} (a shared machine: wall-clock timings are "
        f"inflated by other load; server CPU ms/request is not), logs in {workdir}",
        flush=True,
    )
    results: dict[str, Any] = {"stages": stage_breakdown(bundle, instances)}
    results["history_skew"] = history_skew(bundle)
    if not args.skip_attack:
        results["attack"] = bench_attack(bundle, args, workdir)
    results["clinrisk"] = bench_clinrisk(bundle, instances, args, workdir)
    if not args.skip_noop:
        results["kserve_noop"] = bench_noop(instances, args, workdir)
    if not args.skip_mlserver:
        try:
            results["mlserver"] = bench_mlserver(bundle, X, args, workdir)
        except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
            print(f"mlserver: skipped ({exc}); logs in {workdir}", flush=True)
    c = results["clinrisk"]
    for other, label in (
        ("mlserver", "MLServer (precomputed features)"),
        ("kserve_noop", "KServe no-op model"),
    ):
        if other in results:
            m = results[other]
            print(
                f"ratio clinrisk/{label}: single p50 {ratio(c['single']['p50_ms'], m['single']['p50_ms']):.1f}x,"
                f" p99 {ratio(c['single']['p99_ms'], m['single']['p99_ms']):.1f}x,"
                f" batch32 p50 {ratio(c['batch32']['p50_ms'], m['batch32']['p50_ms']):.1f}x,"
                f" c8 throughput {ratio(c['concurrency8']['req_per_s'], m['concurrency8']['req_per_s']):.2f}x,"
                f" server CPU/request"
                f" {ratio(c['concurrency8']['server_cpu_ms_per_req'], m['concurrency8']['server_cpu_ms_per_req']):.1f}x",
                flush=True,
            )
    goals = {
        "single_p50_le_3ms": c["single"]["p50_ms"] <= 3.0,
        "single_p99_le_10ms": c["single"]["p99_ms"] <= 10.0,
        "c8_ge_400_rps": c["concurrency8"]["req_per_s"] >= 400,
        "zero_errors": c["errors"] == 0,
    }
    results["goals"] = goals
    print("goals:", ", ".join(f"{k}={'met' if v else 'NOT met'}" for k, v in goals.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
