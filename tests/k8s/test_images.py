"""Container images (tier 2): build with images/build.sh, run non-root on a read-only root FS.

Marked ``docker``: run by ``make test-images`` (which starts a Docker engine and sets
``CLINRISK_REQUIRE_DOCKER=1``, so a missing engine fails there); elsewhere skipped when no engine answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import polars as pl
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
        if os.environ.get("CLINRISK_REQUIRE_DOCKER") == "1":
            pytest.fail("no Docker engine answers, but CLINRISK_REQUIRE_DOCKER=1")
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
        "import sys; from pathlib import Path; "
        "from clinrisk.steps import plan_generation_step, resolve_config_step; "
        "resolve_config_step(Path('/in/tiny.yaml').read_text(), "
        "['generate.n_patients=300', 'generate.alpha=-4.6'], '/data/config'); "
        "print('shards', plan_generation_step('/data/config', '/data/plan'))"
    )
    out = _run_ro(images["pipeline"], ["-c", code], {inputs: "/in:ro", data: "/data"}, entrypoint="python3")
    # configs/tiny.yaml asks for 4 shards, but 300 patients are 2 blocks of 250: the plan makes (and the DAG
    # fans out over) 2 shards.
    assert out.strip().splitlines()[-1] == "shards [0, 1]", out
    written = [p for p in (data / "config").rglob("*") if p.is_file()]
    assert written, "the step wrote nothing"
    assert all(p.stat().st_uid == int(UID) for p in written)
    # The CLI entry point of the image: generate a tiny dataset into the mounted volume.
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
    parquet = list((data / "run").rglob("*.parquet"))
    assert parquet, "clinrisk generate wrote no parquet"
    assert pl.read_parquet(parquet[0]).height > 0


WINDOW = 3


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model bundle trained by the product's feature + training code (or CLINRISK_TEST_BUNDLE)."""
    given = os.environ.get("CLINRISK_TEST_BUNDLE")
    if given:
        return Path(given)
    from tests.serving.conftest import build_bundle

    root = tmp_path_factory.mktemp("bundle")
    bundle = build_bundle(root)
    for path in [root, *root.rglob("*")]:  # readable by the image's non-root user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return bundle


@pytest.fixture(scope="module")
def v1_request() -> dict[str, Any]:
    """V1 instances of patients the model never saw (the request contract of docs/contracts.md)."""
    from clinrisk.serving.request import instances_from_raw
    from tests.features.synth import synthetic_raw

    instances = instances_from_raw(synthetic_raw(80, seed=99, id_offset=100_000), WINDOW, n=16)
    assert len(instances) >= 8
    return {"instances": instances}


def _reference_predictions(bundle_dir: Path, request: dict[str, Any]) -> list[dict[str, Any]]:
    """The same request answered by the in-process KServe app on the host."""
    from fastapi.testclient import TestClient

    from clinrisk.config import ServingConfig
    from clinrisk.serving.predictor import ClinriskModel
    from clinrisk.serving.server import build_app

    cfg = ServingConfig()
    model = ClinriskModel(cfg.model_name, bundle_dir, cfg)
    model.load()
    resp = TestClient(build_app(model, cfg)).post("/v1/models/clinrisk:predict", json=request)
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert isinstance(preds, list)
    return preds


# Runs inside the serving container: real HTTP to the server its default CMD started on 0.0.0.0:8080.
_CLIENT = """
import json, sys, urllib.request
base = "http://127.0.0.1:8080"
out = {"ready": json.loads(urllib.request.urlopen(base + "/v1/models/clinrisk", timeout=5).read())}
req = urllib.request.Request(base + "/v1/models/clinrisk:predict", data=sys.stdin.buffer.read(),
                             headers={"Content-Type": "application/json"}, method="POST")
with urllib.request.urlopen(req, timeout=30) as resp:
    out["status"], out["body"] = resp.status, json.loads(resp.read())
with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
    out["metrics"] = resp.read().decode()
print(json.dumps(out))
"""


def _wait_healthy(name: str, timeout_s: float = 150) -> None:
    """Wait for the image's own HEALTHCHECK to report healthy (fails fast if the container exits)."""
    deadline = time.monotonic() + timeout_s
    status = "?"
    while time.monotonic() < deadline:
        state = json.loads(_docker("inspect", "--format", "{{json .State}}", name).stdout)
        status = (state.get("Health") or {}).get("Status", "none")
        if status == "healthy":
            return
        if not state.get("Running"):
            break
        time.sleep(2)
    logs = _docker("logs", name, check=False)
    raise AssertionError(f"{name} not healthy ({status}):\n{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}")


def test_serving_image_answers_v1(
    images: dict[str, str], bundle_dir: Path, v1_request: dict[str, Any]
) -> None:
    """The image's default command serves the bundle; V1 answers equal the in-process server's."""
    name = f"clinrisk-serving-test-{os.getpid()}"
    _docker(
        "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--network", "none",
        "-v", f"{bundle_dir}:/mnt/models:ro", images["serving"],
    )  # fmt: skip
    try:
        _wait_healthy(name)
        proc = subprocess.run(
            ["docker", "exec", "-i", name, "python3", "-c", _CLIENT],
            input=json.dumps(v1_request), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        answer = json.loads(proc.stdout)
    finally:
        _docker("rm", "-f", name, check=False)
    assert answer["ready"] == {"name": "clinrisk", "ready": True}
    assert answer["status"] == 200
    preds = answer["body"]["predictions"]
    assert len(preds) == len(v1_request["instances"])
    for pred in preds:
        assert 0.0 <= pred["probability"] <= 1.0 and pred["label"] in (0, 1)
    assert len({round(p["probability"], 9) for p in preds}) > 1, "every patient got the same score"
    expected = _reference_predictions(bundle_dir, v1_request)
    assert [p["label"] for p in preds] == [p["label"] for p in expected]
    assert [p["probability"] for p in preds] == pytest.approx([p["probability"] for p in expected], abs=1e-9)
    for metric in ("clinrisk_requests_total", "clinrisk_predicted_probability_bucket"):
        assert metric in answer["metrics"], metric
