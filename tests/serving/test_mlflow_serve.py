"""One model contract (issue 19): the registered MLflow model, served by MLflow itself with
``mlflow models serve -m models:/<name>@challenger``, answers the same raw-history instances as the KServe V1
endpoint with the same probabilities, bit for bit.

Env manager: ``local``. The logged environment is proven separately: its requirements name no package that
is on no index (clinrisk travels as ``code_paths``, not as ``clinrisk==0.1.0``) and ``pip install --dry-run``
resolves them from PyPI for this Python. (``--env-manager virtualenv`` would rebuild that environment from
PyPI on every run, a few hundred MB and minutes; the dry run checks the same resolution in seconds.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clinrisk.config import load_config
from tests.serving.conftest import free_port


@pytest.fixture(scope="module")
def registered(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``bundle_dir`` (the bundle the live KServe server serves) registered as challenger in a fresh store."""
    from clinrisk import registry, tracking

    tmp = tmp_path_factory.mktemp("mlflow_serve")
    cfg = load_config(None, [f"run.output_dir={tmp}"])
    run_id = tracking.start_run(cfg)
    version = registry.register_bundle(cfg, bundle_dir, run_id)
    tracking.end_run(run_id)
    return {
        "cfg": cfg,
        "uri": tracking.tracking_uri(cfg),
        "model_uri": tracking.model_uri(cfg, tracking.CHALLENGER),
        "version": version,
        "tmp": tmp,
    }


@pytest.fixture(scope="module")
def mlflow_server(registered: dict[str, Any]) -> Iterator[str]:
    """``mlflow models serve -m models:/<name>@challenger --env-manager local`` on 127.0.0.1."""
    port = free_port()
    log = registered["tmp"] / "mlflow-serve.log"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered["uri"],
        "MLFLOW_REGISTRY_URI": registered["uri"],
        # the CLI starts `uvicorn` by name: this environment's, as from an activated virtualenv
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", registered["model_uri"],
        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1",
    ]  # fmt: skip
    with open(log, "w") as fh:
        # its own process group: the CLI starts a uvicorn server process, and both must go at the end
        proc = subprocess.Popen(
            cmd, cwd=registered["tmp"], stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ping(url, proc, log)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_ping(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 240) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow models serve not ready after {timeout_s}s:\n{log.read_text()[-3000:]}")


def test_mlflow_serve_matches_kserve_bit_for_bit(
    mlflow_server: str, live_server: str, instances: list[dict[str, Any]]
) -> None:
    batch = instances[:12]
    kserve = httpx.post(f"{live_server}/v1/models/clinrisk:predict", json={"instances": batch}, timeout=60)
    assert kserve.status_code == 200, kserve.text
    mlflow = httpx.post(f"{mlflow_server}/invocations", json={"inputs": batch}, timeout=60)
    assert mlflow.status_code == 200, mlflow.text
    want, got = kserve.json()["predictions"], mlflow.json()["predictions"]
    assert [p["probability"] for p in got] == [p["probability"] for p in want]  # exact float equality
    assert got == want  # label, threshold, OOD flags, warnings, reasons: the same response objects
    # one instance at a time, and with reason codes (the V1 parameter, an MLflow param here)
    one = httpx.post(
        f"{mlflow_server}/invocations", json={"inputs": batch[:1], "params": {"reason_codes_top_k": 3}}
    ).json()["predictions"]
    ref = httpx.post(
        f"{live_server}/v1/models/clinrisk:predict",
        json={"instances": batch[:1], "parameters": {"reason_codes_top_k": 3}},
    ).json()["predictions"]
    assert one == ref and len(one[0]["reasons"]) == 3


def test_mlflow_serve_rejects_a_bad_instance_like_kserve(
    mlflow_server: str, live_server: str, instances: list[dict[str, Any]]
) -> None:
    bad = [{**instances[0], "sex": "X"}]
    kserve = httpx.post(f"{live_server}/v1/models/clinrisk:predict", json={"instances": bad})
    mlflow = httpx.post(f"{mlflow_server}/invocations", json={"inputs": bad})
    assert kserve.status_code == mlflow.status_code == 400
    assert "instances[0]" in mlflow.json()["message"] and "sex" in mlflow.json()["message"]


def test_logged_model_carries_its_code_example_and_an_installable_environment(
    registered: dict[str, Any], tmp_path: Path
) -> None:
    import json

    import mlflow.artifacts
    import yaml

    uri = registered["uri"]
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=registered["model_uri"], dst_path=str(tmp_path), tracking_uri=uri, registry_uri=uri
        )
    )
    assert (local / "code" / "clinrisk" / "serving" / "inference.py").is_file()  # code_paths
    assert not list((local / "code").rglob("__pycache__"))
    example = json.loads((local / "input_example.json").read_text())
    assert example and "history" in json.dumps(example)
    reqs = [r for r in (local / "requirements.txt").read_text().splitlines() if r.strip()]
    assert not [r for r in reqs if r.lower().startswith("clinrisk")], reqs  # on no index
    assert any(r.startswith("mlflow==") for r in reqs) and any(r.startswith("lightgbm==") for r in reqs)
    env = yaml.safe_load((local / "python_env.yaml").read_text())
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    # The environment `mlflow models serve --env-manager virtualenv` would build resolves from the index.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--disable-pip-version-check", "-r", str(local / "requirements.txt")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
