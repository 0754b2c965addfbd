"""Serving benchmark: the clinrisk KServe predictor (raw patient history -> features -> probability) vs the
same LightGBM model served from PRECOMPUTED features by MLServer's LightGBM runtime.

Measures, per server, with keep-alive HTTP clients: single-instance latency p50/p99, 32-instance batch
latency p50/p99, throughput at concurrency 8, and the error count. Goals (2 cores, one worker): p50 <= 3 ms,
p99 <= 10 ms single instance, >= 400 req/s at concurrency 8, zero errors.

MLServer 1.7.1 pins an older FastAPI than KServe, so it is installed into its own virtual environment
``.bench-venv-mlserver/`` (created here on first use; keep it out of git).

    python benchmarks/bench_serving.py                  # 60 s per server (20 s per measurement)
    python benchmarks/bench_serving.py --duration 15 --skip-mlserver
    python benchmarks/bench_serving.py --bundle outputs/tiny/bundle
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

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MLSERVER_VENV = REPO / ".bench-venv-mlserver"
MLSERVER_PINS = ("mlserver==1.7.1", "mlserver-lightgbm==1.7.1")
BATCH = 32
CONCURRENCY = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f}s")


def latency_run(post: Callable[[httpx.Client], bool], seconds: float) -> dict[str, float]:
    """Sequential requests on one keep-alive connection: latency percentiles (ms) and errors."""
    lat: list[float] = []
    errors = 0
    with httpx.Client(timeout=30) as c:
        post(c)  # warm-up (connection, plan caches)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            ok = post(c)
            lat.append(time.perf_counter() - t)
            errors += not ok
    a = np.asarray(lat) * 1000
    return {
        "n": a.size,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "errors": errors,
    }


def throughput_run(post: Callable[[httpx.Client], bool], seconds: float, workers: int) -> dict[str, float]:
    """``workers`` threads, each with its own keep-alive client, for ``seconds``: req/s and errors."""
    counts = [0] * workers
    errs = [0] * workers
    start = threading.Barrier(workers + 1)
    stop = threading.Event()

    def work(k: int) -> None:
        with httpx.Client(timeout=30) as c:
            post(c)
            start.wait()
            while not stop.is_set():
                ok = post(c)
                counts[k] += 1
                errs[k] += not ok

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"req_per_s": sum(counts) / elapsed, "requests": sum(counts), "errors": sum(errs)}


def measure(
    name: str, single: Callable[[httpx.Client], bool], batch: Callable[[httpx.Client], bool], seconds: float
) -> dict[str, Any]:
    per = seconds / 3
    out = {
        "single": latency_run(single, per),
        "batch32": latency_run(batch, per),
        "concurrency8": throughput_run(single, per, CONCURRENCY),
    }
    s, b, c = out["single"], out["batch32"], out["concurrency8"]
    print(
        f"{name:10s} single p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms | batch32 p50 {b['p50_ms']:7.2f} ms"
        f"  p99 {b['p99_ms']:7.2f} ms | c8 {c['req_per_s']:7.1f} req/s | errors {s['errors'] + b['errors'] + c['errors']}",
        flush=True,
    )
    return out


def stop_process(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


# ------------------------------------------------------------------------------------------ clinrisk


def bench_clinrisk(
    bundle: Path, instances: list[dict[str, Any]], seconds: float, logdir: Path
) -> dict[str, Any]:
    from clinrisk.serving.client import wait_ready

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
    with open(logdir / "clinrisk.log", "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, timeout_s=180)
        url = f"{base}/v1/models/clinrisk:predict"
        one = json.dumps({"instances": instances[:1]}).encode()
        many = json.dumps({"instances": instances[:BATCH]}).encode()
        hdr = {"content-type": "application/json"}

        def single(c: httpx.Client) -> bool:
            return c.post(url, content=one, headers=hdr).status_code == 200

        def batch(c: httpx.Client) -> bool:
            return c.post(url, content=many, headers=hdr).status_code == 200

        return measure("clinrisk", single, batch, seconds)
    finally:
        stop_process(proc)


# ----------------------------------------------------------------------------------------- MLServer


def ensure_mlserver_venv() -> Path:
    """``.bench-venv-mlserver/bin/mlserver`` (venv created and pinned packages installed on first use)."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if exe.exists():
        return exe
    print(f"creating {MLSERVER_VENV} with {' '.join(MLSERVER_PINS)} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
    pip = [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *MLSERVER_PINS], check=True)
    return exe


def bench_mlserver(bundle: Path, X: np.ndarray, seconds: float, logdir: Path) -> dict[str, Any]:
    exe = ensure_mlserver_venv()
    mdir = Path(tempfile.mkdtemp(prefix="mlserver-"))
    (mdir / "models" / "clinrisk-lgb").mkdir(parents=True)
    (mdir / "models" / "clinrisk-lgb" / "model.txt").write_text((bundle / "model.txt").read_text())
    (mdir / "models" / "clinrisk-lgb" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "clinrisk-lgb",
                "implementation": "mlserver_lightgbm.LightGBMModel",
                "parameters": {"uri": "./model.txt"},
            }
        )
    )
    port, grpc, mport = free_port(), free_port(), free_port()
    (mdir / "models" / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": port,
                "grpc_port": grpc,
                "metrics_port": mport,
                "parallel_workers": 0,
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    with open(logdir / "mlserver.log", "w") as fh:
        proc = subprocess.Popen(
            [str(exe), "start", str(mdir / "models")], stdout=fh, stderr=subprocess.STDOUT, env=env
        )
    try:
        base = f"http://127.0.0.1:{port}/v2/models/clinrisk-lgb"
        wait_http(f"{base}/ready")
        # JSON has no NaN: missing values are sent as 0.0 (same tree traversal cost; probabilities differ).
        Xj = np.where(np.isfinite(X), X, 0.0).astype(np.float64)

        def body(rows: np.ndarray) -> bytes:
            return json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input-0",
                            "shape": list(rows.shape),
                            "datatype": "FP32",
                            "data": rows.ravel().tolist(),
                        }
                    ]
                }
            ).encode()

        one, many = body(Xj[:1]), body(Xj[:BATCH])
        url, hdr = f"{base}/infer", {"content-type": "application/json"}

        def single(c: httpx.Client) -> bool:
            return c.post(url, content=one, headers=hdr).status_code == 200

        def batch(c: httpx.Client) -> bool:
            return c.post(url, content=many, headers=hdr).status_code == 200

        return measure("mlserver", single, batch, seconds)
    finally:
        stop_process(proc)


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
    from clinrisk.serving.request import instances_from_raw, validate_request

    if bundle is None:
        from tests.serving.conftest import build_bundle

        print("training a small benchmark bundle ...", flush=True)
        bundle = build_bundle(workdir)
    engine = ServingEngine.from_dir(bundle, ServingConfig())
    x = engine.spec.window_years
    candidates = instances_from_raw(synthetic_raw(200, seed=5, id_offset=500_000), x, n=96)
    # The synthetic rows are not run through the validate stage: drop patients it would quarantine.
    instances = [i for i in candidates if _valid(i, x)][:64]
    req = validate_request({"instances": instances}, window_years=engine.spec.window_years, max_instances=256)
    X = engine.matrix(engine.current_rows(req))
    return bundle, instances, X


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--duration", type=float, default=60.0, help="seconds per server (split over 3 measurements)"
    )
    ap.add_argument("--bundle", type=Path, default=None, help="bundle dir (default: train a small one)")
    ap.add_argument("--skip-mlserver", action="store_true", help="measure the clinrisk predictor only")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    bundle, instances, X = make_inputs(args.bundle, workdir)
    print(
        f"cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f} (timings are inflated by other load)",
        flush=True,
    )
    results: dict[str, Any] = {"clinrisk": bench_clinrisk(bundle, instances, args.duration, workdir)}
    if not args.skip_mlserver:
        try:
            results["mlserver"] = bench_mlserver(bundle, X, args.duration, workdir)
        except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
            print(f"mlserver: skipped ({exc}); logs in {workdir}", flush=True)
    c = results["clinrisk"]
    goals = {
        "single_p50_le_3ms": c["single"]["p50_ms"] <= 3.0,
        "single_p99_le_10ms": c["single"]["p99_ms"] <= 10.0,
        "c8_ge_400_rps": c["concurrency8"]["req_per_s"] >= 400,
        "zero_errors": c["single"]["errors"] + c["batch32"]["errors"] + c["concurrency8"]["errors"] == 0,
    }
    results["goals"] = goals
    if "mlserver" in results:
        m = results["mlserver"]
        ratio = c["single"]["p50_ms"] / m["single"]["p50_ms"] if m["single"]["p50_ms"] > 0 else math.nan
        print(
            f"ratio clinrisk/mlserver single p50: {ratio:.1f}x (clinrisk also validates and builds features)"
        )
    print("goals:", ", ".join(f"{k}={'met' if v else 'NOT met'}" for k, v in goals.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
