"""Container images (tier 2): build with images/build.sh, run non-root on a read-only root FS.

Marked ``docker``: run by ``make test-images`` (which starts a Docker engine); skipped by ``make test``
only when no Docker engine answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from clinrisk import __version__

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
PIPELINE = os.environ.get("CLINRISK_PIPELINE_IMAGE", f"clinrisk/pipeline:{__version__}")
SERVING = os.environ.get("CLINRISK_SERVING_IMAGE", f"clinrisk/serving:{__version__}")
UID = "10001"


def _docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def _engine_up() -> bool:
    try:
        return _docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Build both images once per session (cached layers make a rebuild cheap)."""
    if not _engine_up():
        pytest.skip("no Docker engine running (make test-images starts one)")
    if os.environ.get("CLINRISK_SKIP_IMAGE_BUILD") != "1":
        subprocess.run([str(REPO / "images" / "build.sh"), "all"], cwd=REPO, check=True, timeout=1800)
    return {"pipeline": PIPELINE, "serving": SERVING}


def _run_ro(
    image: str, args: list[str], mounts: dict[Path, str] | None = None, entrypoint: str | None = None
) -> str:
    cmd = ["run", "--rm", "--read-only", "--tmpfs", "/tmp:rw,size=512m", "--cap-drop", "ALL"]
    cmd += ["--security-opt", "no-new-privileges"]
    for host, target in (mounts or {}).items():
        cmd += ["-v", f"{host}:{target}"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    proc = _docker(*cmd, image, *args, check=False)
    assert proc.returncode == 0, f"{image} {args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _inspect(image: str) -> dict[str, Any]:
    data = json.loads(_docker("image", "inspect", image).stdout)[0]
    assert isinstance(data, dict)
    return data


def test_images_are_non_root_and_pinned(images: dict[str, str]) -> None:
    for image in images.values():
        cfg = _inspect(image)["Config"]
        assert cfg["User"] == f"{UID}:{UID}"
        env = dict(e.split("=", 1) for e in cfg["Env"])
        assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp" and env["MPLCONFIGDIR"].startswith("/tmp")
        assert cfg["Labels"]["org.opencontainers.image.version"] == __version__
    serving = _inspect(images["serving"])["Config"]
    assert "/v1/models/clinrisk" in " ".join(serving["Healthcheck"]["Test"])
    assert serving["Entrypoint"] == ["clinrisk", "serve"]


def test_no_build_tools_and_read_only_site_packages(images: dict[str, str]) -> None:
    script = (
        "for t in gcc cc make g++ /opt/venv/bin/pip; do command -v $t >/dev/null && echo FOUND:$t; done; "
        "touch /opt/venv/lib/python3.11/site-packages/x 2>/dev/null && echo WROTE; id -u; "
        "python3 -c 'import clinrisk, lightgbm, polars, kfp, kserve; print(clinrisk.__version__)'"
    )
    for image in images.values():
        out = _run_ro(image, ["-c", script], entrypoint="sh")
        assert "FOUND" not in out and "WROTE" not in out, out
        assert out.split()[-2:] == [UID, __version__], out


def test_pipeline_image_runs_a_component_step(images: dict[str, str], tmp_path: Path) -> None:
    """A real pipeline step (config resolution + shard plan) writes into a mounted volume, non-root, RO root."""
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)
    inputs = tmp_path / "in"
    inputs.mkdir()
    inputs.chmod(0o755)  # readable by the image's non-root user
    (inputs / "tiny.yaml").write_text((REPO / "configs" / "tiny.yaml").read_text())
    (inputs / "tiny.yaml").chmod(0o644)
    code = (
        "import sys; from pathlib import Path; from clinrisk.steps import resolve_config_step; "
        "shards = resolve_config_step(Path('/in/tiny.yaml').read_text(), "
        "['generate.n_patients=300'], '/data/config'); print('shards', shards)"
    )
    out = _run_ro(images["pipeline"], ["-c", code], {inputs: "/in:ro", data: "/data"}, entrypoint="python3")
    assert "shards" in out
    written = [p for p in (data / "config").rglob("*") if p.is_file()]
    assert written, "the step wrote nothing"
    assert all(p.stat().st_uid == int(UID) for p in written)
    if "generate" in _run_ro(images["pipeline"], ["--help"]):
        # Once `clinrisk generate` lands, also generate a tiny dataset in the container.
        _run_ro(
            images["pipeline"],
            [
                "generate",
                "--config",
                "/in/tiny.yaml",
                "--set",
                "generate.n_patients=300",
                "--set",
                "run.output_dir=/data/run",
            ],
            {inputs: "/in:ro", data: "/data"},
        )
        assert list((data / "run").rglob("*.parquet"))


def _wait_ready(url: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not ready after {timeout_s}s")
        time.sleep(1)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model bundle from the product's tiny pipeline run (path given by CLINRISK_TEST_BUNDLE)."""
    path = os.environ.get("CLINRISK_TEST_BUNDLE")
    if not path:
        pytest.skip("CLINRISK_TEST_BUNDLE not set: no model bundle to serve (see docs/kubernetes.md)")
    return Path(path)


def test_serving_image_answers_v1(images: dict[str, str], bundle_dir: Path) -> None:
    name = f"clinrisk-serving-test-{os.getpid()}"
    _docker(
        "run", "-d", "--rm", "--name", name, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "-p", "127.0.0.1::8080", "-v", f"{bundle_dir}:/mnt/models:ro", images["serving"],
    )  # fmt: skip
    try:
        port = _docker("port", name, "8080/tcp").stdout.strip().rsplit(":", 1)[1]
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}/v1/models/clinrisk")
        example = json.loads((bundle_dir / "feature_spec.json").read_text())
        assert example["feature_names"]
        request = json.loads(os.environ.get("CLINRISK_TEST_INSTANCE", "{}")) or None
        if request is not None:
            req = urllib.request.Request(
                f"{base}/v1/models/clinrisk:predict",
                data=json.dumps({"instances": [request]}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = json.loads(resp.read())
            pred = body["predictions"][0]
            assert 0.0 <= pred["probability"] <= 1.0 and pred["label"] in (0, 1)
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
            assert resp.status == 200
    finally:
        _docker("rm", "-f", name, check=False)
