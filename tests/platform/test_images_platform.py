"""All three images (pipeline, serving, mlflow): non-root, read-only root FS, sizes, a slim serving image.

Marked ``docker`` (run by `make test-images` after images/build.sh built all three). The mlflow image really
serves: `mlflow server` (the image's entrypoint) on a read-only root FS answers /health and an API call.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from clinrisk import __version__

pytestmark = pytest.mark.docker
UID = "10001:10001"
IMAGES = {
    name: os.environ.get(f"CLINRISK_{name.upper()}_IMAGE", f"clinrisk/{name}:{__version__}")
    for name in ("pipeline", "serving", "mlflow")
}
TRAINING_ONLY = ("kfp", "mlflow", "matplotlib", "sklearn")


def _docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", autouse=True)
def engine() -> None:
    try:
        up = _docker("info", "--format", "{{.ServerVersion}}", timeout=20).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        up = False
    if not up:
        if os.environ.get("CLINRISK_REQUIRE_DOCKER") == "1":
            pytest.fail("no Docker engine answers, but CLINRISK_REQUIRE_DOCKER=1")
        pytest.skip("no Docker engine running (make test-images starts one)")
    missing = [i for i in IMAGES.values() if _docker("image", "inspect", i).returncode != 0]
    assert not missing, f"images not built: {missing} (images/build.sh all)"


def _ro(image: str, *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["run", "--rm", "--read-only", "--user", UID, "--tmpfs", "/tmp:rw,size=256m", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", "--network", "none"]  # fmt: skip
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return _docker(*cmd, image, *args)


def test_sizes_are_printed_and_users_are_non_root() -> None:
    for name, image in IMAGES.items():
        size = int(_docker("image", "inspect", "-f", "{{.Size}}", image).stdout.strip())
        user = _docker("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip()
        print(f"\nIMAGE-SIZE {name} {image} {size / 1e6:.0f} MB")
        assert user == UID, f"{image}: runs as {user!r}"


@pytest.mark.parametrize(
    "name,entrypoint,args",
    [
        ("pipeline", None, ["version"]),
        ("serving", "python3", ["-c", "import clinrisk.serving.server, clinrisk.bundle, lightgbm"]),
        ("mlflow", "python3", ["-c", "import mlflow.server, psycopg2, boto3"]),
    ],
)
def test_runs_non_root_on_a_read_only_root_fs(name: str, entrypoint: str | None, args: list[str]) -> None:
    out = _ro(IMAGES[name], *args, entrypoint=entrypoint)
    assert out.returncode == 0, f"{name}: {out.stdout}\n{out.stderr}"
    probe = _ro(IMAGES[name], "-c", "import os; open('/opt/venv/x', 'w')", entrypoint="python3")
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr


def test_serving_image_carries_no_training_stack() -> None:
    code = (
        "import importlib.util as u, sys; found = [m for m in sys.argv[1:] if u.find_spec(m)]; "
        "print(','.join(found)); sys.exit(1 if found else 0)"
    )
    out = _ro(IMAGES["serving"], "-c", code, *TRAINING_ONLY, entrypoint="python3")
    assert out.returncode == 0, f"serving image carries {out.stdout.strip()} {out.stderr[-500:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mlflow_image_serves_on_a_read_only_root_fs() -> None:
    port = _free_port()
    name = f"clinrisk-mlflow-ro-{port}"
    run = _docker(
        "run", "-d", "--rm", "--name", name, "--read-only", "--user", UID, "--tmpfs", "/tmp:rw,size=256m",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "host", IMAGES["mlflow"],
        "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri", "sqlite:////tmp/mlflow.db",
        "--serve-artifacts", "--artifacts-destination", "/tmp/artifacts", "--workers", "1",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    try:
        deadline, status = time.monotonic() + 240, 0
        while time.monotonic() < deadline and status != 200:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10
                ) as resp:
                    status = resp.status
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        logs = _docker("logs", name).stdout[-2000:] + _docker("logs", name).stderr[-2000:]
        assert status == 200, f"mlflow image did not answer the API on a read-only root FS:\n{logs}"
    finally:
        _docker("rm", "-f", name)
