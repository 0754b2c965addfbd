"""End-of-run serving smoke test: start the real KServe server on the newest model, send one V1 request."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clinrisk.config import ClinriskConfig
from clinrisk.errors import StageError
from clinrisk.usecases import DEFAULT_USECASE, get


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_server(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run the server command ``cmd`` (stdout and stderr to ``log``) for the ``with`` block; then stop it
    (SIGTERM, SIGKILL after 20 s) and reap it, so no server outlives the smoke test."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_serving(proc: subprocess.Popen[bytes], base: str, model_name: str, timeout_s: float) -> None:
    """Until the model answers ready at ``base``; a server that exits first (a corrupt model: exit 2) ends the
    wait at once with StageError instead of after ``timeout_s``."""
    from clinrisk.serving.client import ServingUnavailable, wait_ready

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise StageError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            wait_ready(base, model_name, timeout_s=1.0)
            return
        except ServingUnavailable:
            if time.monotonic() > deadline:
                raise


@contextlib.contextmanager
def _no_artifact_progress_bar() -> Iterator[None]:
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    saved = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def serving_smoke_test(
    cfg: ClinriskConfig, model_uri: str, validated_dir: Path, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Resolve ``model_uri`` from the registry, serve it on 127.0.0.1, predict, stop. The clinical request
    holds real patients from ``validated_dir``; another use case sends its contract's example instance.

    Returns ``{"url", "bundle", "request", "response"}``; any failure raises StageError with the server log.
    """
    own_test = get(cfg.run.usecase).serving_smoke_test
    if own_test is not None:  # a use case serving its own model (e.g. segmentation's UNet predictor)
        return own_test(cfg, model_uri, Path(validated_dir))
    from clinrisk.io import list_shards
    from clinrisk.serving.client import example_request, predict
    from clinrisk.tracking import resolve_model

    # MLflow's download progress bar would be the only non-step output of `make run` (quiet runs, issue 19).
    with _no_artifact_progress_bar():
        bundle = resolve_model(
            cfg, model_uri.rsplit("/", 1)[-1] if model_uri.startswith("models:/") else model_uri
        )
    host, port = "127.0.0.1", free_port()
    if cfg.run.usecase == DEFAULT_USECASE:
        request = example_request(list_shards(Path(validated_dir))[0], cfg.features.window_years, n=2)
    else:
        example = dict(get(cfg.run.usecase).serving.example_instance())
        request = {"instances": [example, example]}
    log = Path(bundle).parent / "smoke-server.log"
    cmd = [
        sys.executable, "-m", "clinrisk", "--usecase", cfg.run.usecase, "serve", "--bundle", str(bundle),
        "--set", f"serving.host={host}", "--set", f"serving.http_port={port}",
    ]  # fmt: skip
    base = f"http://{host}:{port}"
    with local_server(cmd, log) as proc:
        try:
            wait_serving(proc, base, cfg.serving.model_name, timeout_s)
            response = predict(base, request["instances"], cfg.serving.model_name)
        except Exception as exc:
            raise StageError(
                f"serving smoke test failed: {exc}\n--- server log ---\n{log.read_text()[-3000:]}"
            ) from exc
    return {"url": base, "bundle": str(bundle), "request": request, "response": response}
