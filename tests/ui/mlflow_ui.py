"""Start a real MLflow UI (``mlflow server``) over a local store on 127.0.0.1 and build its page URLs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowUi:
    """``mlflow server`` on a free loopback port over ``backend_uri``; a context manager that stops it."""

    def __init__(self, backend_uri: str, log_file: Path, timeout_s: float = 300.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        mlflow = Path(sys.executable).with_name("mlflow")
        self._log = log_file.open("wb")
        self._proc = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--backend-store-uri",
                backend_uri,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_TRACKING_URI": backend_uri},
            start_new_session=True,  # its gunicorn/uvicorn workers stop with it (killpg below)
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2).read()
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(
                        f"mlflow server on {self.url} did not come up; log: {log_file}"
                    ) from None
                time.sleep(0.5)

    def artifact_page(self, experiment_id: str, run_id: str, artifact_path: str) -> str:
        """The run page's Artifacts tab with ``artifact_path`` selected."""
        return f"{self.url}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{artifact_path}"

    def close(self) -> None:
        if self._proc.poll() is None:
            import signal

            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._log.close()

    def __enter__(self) -> MlflowUi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
