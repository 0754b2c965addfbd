"""The smoke tests' local server (clinrisk.smoke.local_server / wait_serving, shared by every use case's
smoke test): a server that dies ends the wait at once; a server that never answers times out; the server is
stopped and reaped however the block ends."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from clinrisk.errors import StageError
from clinrisk.serving.client import ServingUnavailable
from clinrisk.smoke import free_port, local_server, wait_serving

# A "server" that answers nothing: listens on the port and never replies (so a readiness poll times out).
SILENT = (
    "import socket, sys, time\ns = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "print('listening', flush=True)\ntime.sleep(600)\n"
)


def test_a_server_that_exits_ends_the_wait_at_once(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-c", "import sys; print('cannot load the model'); sys.exit(2)"]
    start = time.monotonic()
    with (
        local_server(cmd, log) as proc,
        pytest.raises(StageError, match="exited with code 2 before it was ready"),
    ):
        wait_serving(proc, "http://127.0.0.1:9", "m", timeout_s=120)
    assert time.monotonic() - start < 60  # not the 120 s timeout
    assert "cannot load the model" in log.read_text()


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    port = free_port()
    with (
        pytest.raises(ServingUnavailable),
        local_server([sys.executable, "-c", SILENT, str(port)], tmp_path / "l") as proc,
    ):
        wait_serving(proc, f"http://127.0.0.1:{port}", "m", timeout_s=2)
    assert proc.returncode is not None  # stopped and reaped, not left running


def test_the_server_is_stopped_when_the_block_raises(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError),
        local_server([sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "l") as proc,
    ):
        raise RuntimeError("the request failed")
    assert proc.returncode is not None
