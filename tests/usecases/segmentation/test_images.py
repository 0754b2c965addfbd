"""Tier 2: the segmentation images (images/build.sh segmentation), run non-root on a read-only root FS.

- ``clinrisk/segmentation`` (the pipeline image + jax, jaxlib, optax): the segmentation pipeline on the
  tiny config through kfp.local's DockerRunner, its model steps (train, evaluate, register) in this image
  and its data steps in the pipeline image.
- ``clinrisk/segmentation-serving`` (the serving image + jax, jaxlib, Pillow): its default command serves
  the checkpoint that pipeline trained; a V1 request's masks equal the in-process predictor's (the image's
  JAX computes what the host's does), and bad input gets its 400.
- The tabular images stay free of JAX.

Marked ``docker``: run by ``make test-images`` (engine started, images built, ``CLINRISK_REQUIRE_DOCKER=1``);
elsewhere skipped when no engine answers.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("jax")

from clinrisk.images import pipeline_image, serving_image
from clinrisk.io import read_json
from clinrisk.pipeline_runner import RUN_LABEL
from tests.usecases.segmentation.conftest import REPO, TINY

pytestmark = pytest.mark.docker

UID = "10001:10001"
# The tiny config: 8 patients in shards of 4 -> 2 generate + 2 validate tasks.
DATA_TASKS = ["finalize-tracking", "resolve-config", "start-tracking", "plan-generation", "merge-data"]
SHARDS = 2
MODEL_TASKS = ["train-segmentation", "evaluate-segmentation", "register-segmentation"]


def _docker(*args: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def _images() -> dict[str, str]:
    from pipelines.segmentation import segmentation_image

    from clinrisk.usecases.segmentation.deploy import serving_image as segmentation_serving_image

    return {"segmentation": segmentation_image(), "segmentation-serving": segmentation_serving_image()}


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Both segmentation images (built here unless make test-images built them: CLINRISK_SKIP_IMAGE_BUILD)."""
    try:
        up = _docker("info", "--format", "{{.ServerVersion}}", timeout=20).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        up = False
    if not up:
        if os.environ.get("CLINRISK_REQUIRE_DOCKER") == "1":
            pytest.fail("no Docker engine answers, but CLINRISK_REQUIRE_DOCKER=1")
        pytest.skip("no Docker engine running (make test-images starts one)")
    if os.environ.get("CLINRISK_SKIP_IMAGE_BUILD") != "1":
        subprocess.run(
            [str(REPO / "images" / "build.sh"), "segmentation"], cwd=REPO, check=True, timeout=1800
        )
    named = _images()
    missing = [i for i in named.values() if _docker("image", "inspect", i).returncode != 0]
    assert not missing, f"images not built: {missing} (images/build.sh segmentation)"
    return named


def _size_mb(image: str) -> float:
    return int(_docker("image", "inspect", "-f", "{{.Size}}", image, check=True).stdout.strip()) / 1e6


def _run_ro(image: str, script: str) -> subprocess.CompletedProcess[str]:
    return _docker(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp:rw,size=256m", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--network", "none", "--entrypoint", "sh", image, "-c", script,
    )  # fmt: skip


_PROBE = (
    "id -u; touch /opt/venv/lib/python3.11/site-packages/x 2>/dev/null && echo WROTE; "
    "for t in gcc cc make /opt/venv/bin/pip; do command -v $t >/dev/null && echo FOUND:$t; done; "
    'python3 -c \'import importlib.util as u; print(*(bool(u.find_spec(m)) for m in ("jax", "optax")))\''
)


def test_jax_is_only_in_the_segmentation_images_which_run_non_root_read_only(
    images: dict[str, str],
) -> None:
    bases = {"segmentation": pipeline_image(), "segmentation-serving": serving_image()}
    found = {}
    for image in [*images.values(), *bases.values()]:
        proc = _run_ro(image, _PROBE)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = proc.stdout.split("\n")
        assert lines[0] == "10001" and "WROTE" not in proc.stdout and "FOUND" not in proc.stdout, proc.stdout
        found[image] = lines[-2]
    assert found[bases["segmentation"]] == found[bases["segmentation-serving"]] == "False False"
    assert found[images["segmentation"]] == "True True"  # the model steps train: optax too
    assert found[images["segmentation-serving"]] == "True False"  # serving never imports optax
    for role, image in images.items():
        cfg = json.loads(_docker("image", "inspect", image, check=True).stdout)[0]["Config"]
        assert cfg["User"] == UID
        assert "JAX_PLATFORMS=cpu" in cfg["Env"]
        size, base = _size_mb(image), _size_mb(bases[role])
        print(f"\nIMAGE-SIZE {role} {image} {size:.0f} MB (+{size - base:.0f} MB over {bases[role]})")
    serving = json.loads(_docker("image", "inspect", images["segmentation-serving"], check=True).stdout)[0]
    assert serving["Config"]["Entrypoint"] == ["clinrisk", "segmentation", "serve"]
    assert "/v1/models/segmentation" in " ".join(serving["Config"]["Healthcheck"]["Test"])


def _container_events(image: str, since: float, until: float, run_id: str) -> list[dict[str, Any]]:
    """Containers of ``image`` that died in [since, until] and carry the run's label (another test's
    container stopping in the same second is not counted)."""
    proc = _docker(
        "events", "--since", str(int(since)), "--until", str(int(until) + 1), "--filter", "type=container",
        "--filter", "event=die", "--filter", f"image={image}", "--filter", f"label={RUN_LABEL}={run_id}",
        "--format", "{{json .}}", check=True, timeout=60,
    )  # fmt: skip
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def docker_run(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`clinrisk pipeline run --runner docker --usecase segmentation` on the tiny config (real CLI)."""
    out = tmp_path_factory.mktemp("seg-docker")
    cmd = [
        sys.executable, "-m", "clinrisk", "pipeline", "run", "--runner", "docker", "--usecase", "segmentation",
        "-v", "--config", str(TINY), "--set", f"run.output_dir={out}",
    ]  # fmt: skip
    since = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    until = time.time()
    log = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, log[-6000:]
    (run_id,) = [d.name for d in (out / "seg-tiny" / "runs").iterdir() if d.is_dir()]
    return {
        "root": out / "seg-tiny",
        "dir": (out / "seg-tiny" / "latest").resolve(),
        "log": log,
        "events": {
            image: _container_events(image, since, until, run_id)
            for image in (images["segmentation"], pipeline_image())
        },
    }


def test_the_model_steps_run_in_the_segmentation_image(
    images: dict[str, str], docker_run: dict[str, Any]
) -> None:
    events = docker_run["events"]
    model_exits = [e["Actor"]["Attributes"].get("exitCode") for e in events[images["segmentation"]]]
    data_exits = [e["Actor"]["Attributes"].get("exitCode") for e in events[pipeline_image()]]
    assert model_exits == ["0"] * len(MODEL_TASKS), model_exits
    # Under kfp.local (docker runner too) the plan groups the shards into at most run.workers tasks per
    # fan-out (generate, validate); every shard is still produced exactly once.
    groups = read_json(docker_run["dir"] / "plan-generation" / "plan" / "task_groups.json")["groups"]
    assert sorted(s for g in groups for s in g) == list(range(SHARDS))
    assert data_exits == ["0"] * (len(DATA_TASKS) + 2 * len(groups)), data_exits
    assert "Pipeline 'clinrisk-segmentation' finished with status SUCCESS" in docker_run["log"]
    assert "registered model : models:/segmentation/1" in docker_run["log"]
    d = docker_run["dir"]
    for task in MODEL_TASKS:
        assert (d / task).is_dir(), task
    # DockerRunner(user=uid:gid): what the containers wrote belongs to the caller.
    files = [p for p in d.rglob("*") if p.is_file()]
    assert files and {p.stat().st_uid for p in files} == {os.getuid()}


# Runs inside the serving container: real HTTP to the server its default CMD started on 0.0.0.0:8080.
_CLIENT = """
import json, sys, urllib.error, urllib.request
base = "http://127.0.0.1:8080/v1/models/segmentation"
def post(body):
    req = urllib.request.Request(base + ":predict", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
out = {"ready": json.loads(urllib.request.urlopen(base, timeout=5).read())}
out["ok"] = post(sys.stdin.buffer.read())
out["not_an_image"] = post(json.dumps({"instances": [{"image_b64": "aGVsbG8gd29ybGQ="}]}).encode())
print(json.dumps(out))
"""


def _wait_healthy(name: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    status = "?"
    while time.monotonic() < deadline:
        state = json.loads(_docker("inspect", "--format", "{{json .State}}", name, check=True).stdout)
        status = (state.get("Health") or {}).get("Status", "none")
        if status == "healthy":
            return
        if not state.get("Running"):
            break
        time.sleep(2)
    logs = _docker("logs", name)
    raise AssertionError(f"{name} not healthy ({status}):\n{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}")


def test_the_serving_image_answers_v1_with_the_in_process_masks(
    images: dict[str, str], docker_run: dict[str, Any], tmp_path: Path
) -> None:
    from clinrisk.config import load_config
    from clinrisk.usecases.segmentation.config import ServeParams
    from clinrisk.usecases.segmentation.imaging import decode_gray
    from clinrisk.usecases.segmentation.serving import SegmentationModel
    from clinrisk.usecases.segmentation.smoke import validation_request

    d = docker_run["dir"]
    cfg = load_config(d / "resolve-config" / "config" / "config.yaml")
    # The checkpoint folder as KServe's storage initializer leaves it, readable by the image's user.
    models = tmp_path / "models"
    shutil.copytree(d / "train-segmentation" / "model", models)
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    request = validation_request(cfg, d / "merge-data" / "validated", n=3)
    assert len(request["instances"]) == 3

    name = f"clinrisk-seg-serving-test-{os.getpid()}"
    _docker(
        "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--network", "none",
        "-v", f"{models}:/mnt/models:ro", images["segmentation-serving"], check=True,
    )  # fmt: skip
    try:
        _wait_healthy(name)
        proc = subprocess.run(
            ["docker", "exec", "-i", name, "python3", "-c", _CLIENT],
            input=json.dumps(request), capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        answer = json.loads(proc.stdout)
    finally:
        _docker("rm", "-f", name)
    assert answer["ready"] == {"name": "segmentation", "ready": True}
    status, body = answer["ok"]
    assert status == 200, body
    status, refusal = answer["not_an_image"]
    assert status == 400 and "image" in refusal["error"], refusal

    model = SegmentationModel("segmentation", models / "best.npz", cfg.serving, ServeParams())
    model.load()
    expected = model.segment(request)["predictions"]
    got = body["predictions"]
    assert [p["id"] for p in got] == [p["id"] for p in expected] == [i["id"] for i in request["instances"]]
    for g, e in zip(got, expected, strict=True):
        got_mask = decode_gray(base64.b64decode(g["mask_png_b64"]))
        assert np.array_equal(got_mask, decode_gray(base64.b64decode(e["mask_png_b64"])))
        assert g["confidence"] == pytest.approx(e["confidence"], abs=1e-6)
    assert any(p["mask_pixels"] > 0 for p in got), "every mask is empty: the comparison proves little"
