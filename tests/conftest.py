"""Suite-wide pytest hooks."""

from __future__ import annotations

import signal
import threading
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart() -> None:
    # Python's default SIGTERM ends pytest at once, without fixture teardown, so servers that fixtures start in
    # their own session (MLflow, Postgres, the control plane) would outlive a `kill` or a CI timeout. As a
    # KeyboardInterrupt, pytest stops the run and still tears every fixture down.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
