"""Attacks on a real `clinrisk serve` process over a socket on 127.0.0.1: a 300 MB body (declared and
chunked) while liveness is probed, a slow body, a bad token; and start-up on a corrupt bundle."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.conftest import REPO, free_port

ATTACK_BYTES = 300 * 1024 * 1024
LIMIT = 1024 * 1024
TOKEN = "live-test-token"
PREDICT = "/v1/models/clinrisk:predict"


@pytest.fixture(scope="module")
def guarded(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, Path]]:
    """A real server with a token, a 1 MiB body limit and a 2 s body timeout; yields (port, pid, log)."""
    from clinrisk.serving.client import wait_ready

    port = free_port()
    log = tmp_path_factory.mktemp("guarded") / "server.log"
    cmd = [
        sys.executable, "-m", "clinrisk", "serve", "--bundle", str(bundle_dir),
        "--set", f"serving.http_port={port}", "--set", "serving.host=127.0.0.1",
        "--set", f"serving.max_body_bytes={LIMIT}", "--set", "serving.body_timeout_s=2",
        "--set", "serving.require_auth=true",
    ]  # fmt: skip
    env = {**os.environ, "CLINRISK_SERVING_TOKEN": TOKEN}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout_s=120)
    except Exception:
        proc.kill()
        raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}") from None
    yield port, proc.pid, log
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_300mb_body_is_cut_off_while_probes_keep_answering(
    guarded: tuple[int, int, Path], chunked: bool
) -> None:
    from clinrisk.serving.attack import Prober, oversized_body

    port, pid, _ = guarded
    prober = Prober(f"http://127.0.0.1:{port}/v2/health/live", pid=pid)
    import psutil

    rss0 = psutil.Process(pid).memory_info().rss
    prober.start()
    deadline = time.monotonic() + 30
    while len(prober.latencies) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    n_before = len(prober.latencies)
    try:
        res = oversized_body("127.0.0.1", port, PREDICT, ATTACK_BYTES, chunked=chunked, token=TOKEN)
        # The server keeps answering probes after the attack (during it: the benchmark's p99).
        while len(prober.latencies) < n_before + 3 and time.monotonic() < deadline + 30:
            time.sleep(0.02)
    finally:
        prober.stop()
    assert res.status == 413
    if not chunked:
        assert res.bytes_sent < 16 * 1024 * 1024  # answered before the body, not after it
    else:
        assert res.bytes_sent < ATTACK_BYTES // 4  # cut off near the limit, not read to the end
    assert prober.failures == 0 and n_before >= 3 and len(prober.latencies) >= n_before + 3
    assert prober.max_rss - rss0 <= 100 * 1024 * 1024


def test_slow_body_is_408_after_the_body_timeout(guarded: tuple[int, int, Path]) -> None:
    from clinrisk.serving.attack import slow_body

    port, _, _ = guarded
    res = slow_body("127.0.0.1", port, PREDICT, declared=10_000, sent=100, token=TOKEN, timeout_s=30)
    assert res.status == 408


def test_bad_token_over_the_socket_and_log_lines(guarded: tuple[int, int, Path]) -> None:
    import httpx

    port, _, log = guarded
    r = httpx.post(
        f"http://127.0.0.1:{port}{PREDICT}", json={"instances": []}, headers={"authorization": "Bearer x"}
    )
    assert r.status_code == 401
    text = log.read_text()
    # Structured start-up line, then one line per refusal with its reason code.
    startup = next(ln for ln in text.splitlines() if "start-up" in ln)
    for key in (
        '"bundle_version"',
        '"self_check"',
        '"feature_engine"',
        '"max_body_bytes": 1048576',
        '"auth": "bearer"',
    ):
        assert key in startup, key
    assert TOKEN not in text
    assert "rejected request: status=401 reason=wrong_token" in text
    assert "rejected request: status=413 reason=body_too_large" in text
    assert "Traceback" not in text


def test_corrupt_bundle_exits_2_with_one_line(bundle_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bundle_dir, tmp_path / "b"))
    text = (copy / "model.txt").read_text()
    (copy / "model.txt").write_text(text[: len(text) // 2])
    res = subprocess.run(
        [sys.executable, "-m", "clinrisk", "serve", "--bundle", str(copy), "--set", f"serving.http_port={free_port()}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: bundle file model.txt:"), res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "LightGBM" not in res.stderr


def test_sigterm_is_a_graceful_stop_not_an_error(bundle_dir: Path, tmp_path: Path) -> None:
    """A server's normal stop: uvicorn drains, then re-raises the signal; the command ends with the shell's
    143 and one informational line, not the "error: … nothing was published" of an interrupted step."""
    from clinrisk.serving.client import wait_ready

    port = free_port()
    log = tmp_path / "server.log"
    cmd = [
        sys.executable, "-m", "clinrisk", "serve", "--bundle", str(bundle_dir),
        "--set", f"serving.http_port={port}", "--set", "serving.host=127.0.0.1",
    ]  # fmt: skip
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout_s=120)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert rc == 143, out[-2000:]
    assert "serving stopped by SIGTERM (graceful shutdown)" in out, out[-2000:]
    assert "error:" not in out and "Traceback" not in out, out[-2000:]
