"""Runs under faults, end to end through `clinrisk pipeline run` on a small tiny config (issue 18):
two concurrent runs, SIGTERM and SIGINT mid-step, SIGKILL of the runner, an injected failure, --resume.
After each, the store checker must find nothing wrong.

The tests share one output dir and run in file order (each builds on the store the previous one left).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from clinrisk import run_control as rc
from clinrisk.integrity import check_store
from clinrisk.stages.catalog import FUSED_MODEL_TASK

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "clinical" / "tiny.yaml"
# Small and single-threaded per task: 2 shards, few rounds (the behaviour under test is the runner's).
SMALL = [
    "generate.n_patients=2000",
    "generate.block_size=1000",
    "generate.calibration_patients=3000",
    "select.rounds=2",
    "select.probe_rounds_boost=10",
    "select.num_threads=1",
    "train.num_boost_round=30",
    "train.num_threads=1",
    "evaluate.bootstrap_replicates=10",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("faults")
    return {"out": out, "root": out / "tiny"}


def _start(out: Path, name: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    log = out / f"{name}.out"
    err = out / f"{name}.err"
    cmd = [sys.executable, "-m", "clinrisk", "pipeline", "run", "-c", str(CONFIG),
           "-s", f"run.output_dir={out}", *(a for s in SMALL for a in ("-s", s)), *extra]  # fmt: skip
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=open(log, "w"),
        stderr=open(err, "w"),
        text=True,
        env={**os.environ, **(env or {})},
    )


def _err(out: Path, name: str) -> list[str]:
    return [ln for ln in (out / f"{name}.err").read_text().splitlines() if ln.strip()]


def _new_run(root: Path, known: set[str], proc: subprocess.Popen[str], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = (
            {p.name for p in (root / rc.RUNS_DIR).glob("*")} - known
            if (root / rc.RUNS_DIR).is_dir()
            else set()
        )
        if new:
            return new.pop()
        assert proc.poll() is None, "the run ended before it started"
        time.sleep(0.2)
    raise AssertionError("no new run folder")


def _wait_step(root: Path, run_id: str, step: str, proc: subprocess.Popen[str], timeout: float = 900) -> None:
    """Wait until the run's ``step`` folder appears (the step has started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list((root / rc.RUNS_DIR / run_id).glob(f"clinrisk-training-*/{step}")):
            return
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {step} started"
        time.sleep(0.2)
    raise AssertionError(f"{step} did not start")


def _record(root: Path, run_id: str) -> dict[str, Any]:
    doc = rc.read_record(rc.RunDirs(root, run_id).record)
    assert doc is not None
    return doc


def _mlflow_runs(root: Path, run_id: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(exps, filter_string=f"tags.`kfp.run_id` = '{run_id}'"))


def _versions(root: Path) -> int:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    return len(MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions("name='clinrisk'"))


def _no_orphans(root: Path) -> None:
    time.sleep(0.5)
    assert rc.run_processes(root) == []


def test_two_runs_into_a_new_dir(store: dict[str, Any]) -> None:
    out, root = store["out"], store["root"]
    a, b = _start(out, "a"), _start(out, "b")
    codes = {"a": a.wait(timeout=1800), "b": b.wait(timeout=1800)}
    assert sorted(codes.values()) == [0, 2], codes
    loser = next(k for k, c in codes.items() if c == 2)
    lines = _err(out, loser)
    assert len(lines) == 1 and "locked by run" in lines[0], lines
    (winner,) = [d for d in rc.run_records(root) if d["status"] == rc.SUCCEEDED]
    assert (root / "latest").resolve() == Path(winner["pipeline_dir"])
    # The MLflow run carries the real run id: the name of the run's folder (issue 19).
    (run,) = _mlflow_runs(root, winner["run_id"])
    assert run.info.status == "FINISHED"
    assert Path(winner["pipeline_dir"]).parent.name == winner["run_id"]
    # Quiet by default: one line per step, the task dumps are in the per-task logs.
    stdout = (out / f"{'a' if loser == 'b' else 'b'}.out").read_text()
    assert "executor_input" not in stdout and "config_yaml" not in stdout
    assert len(stdout.splitlines()) < 60
    assert "config_yaml" in (rc.RunDirs(root, winner["run_id"]).logs / "resolve-config.log").read_text()
    assert check_store(out) == []
    store["first"] = winner


def test_sigterm_mid_step_with_a_second_run_on_the_existing_store(store: dict[str, Any]) -> None:
    out, root = store["out"], store["root"]
    assert "first" in store, "needs the previous test's store"
    known = {p.name for p in (root / rc.RUNS_DIR).iterdir()}
    proc = _start(out, "term")
    rid = _new_run(root, known, proc)
    _wait_step(root, rid, "merge-data", proc)
    second = _start(out, "term-second")
    assert second.wait(timeout=300) == 2
    assert f"locked by run {rid} (pid {proc.pid})" in _err(out, "term-second")[0]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143
    assert _err(out, "term") == ["error: interrupted by SIGTERM; nothing was published"]
    assert _record(root, rid)["status"] == rc.INTERRUPTED
    assert rc.temp_dirs(rc.RunDirs(root, rid).dir) == []
    assert [r.info.status for r in _mlflow_runs(root, rid)] in ([], ["KILLED"])
    assert (root / "latest").resolve() == Path(store["first"]["pipeline_dir"])
    _no_orphans(root)
    assert check_store(out) == []


def test_sigint_then_resume_reuses_verified_steps(store: dict[str, Any]) -> None:
    out, root = store["out"], store["root"]
    assert "first" in store, "needs the previous tests' store"
    known = {p.name for p in (root / rc.RUNS_DIR).iterdir()}
    proc = _start(out, "int")
    rid = _new_run(root, known, proc)
    _wait_step(root, rid, FUSED_MODEL_TASK, proc)  # select → register: one local task
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130
    assert _err(out, "int") == ["error: interrupted by SIGINT; nothing was published"]
    statuses = [(r.info.status, r.data.tags.get("kfp.pipeline_state")) for r in _mlflow_runs(root, rid)]
    assert all(s == "KILLED" for s, _ in statuses), statuses
    _no_orphans(root)
    assert check_store(out) == []
    # Corrupt one finished intermediate: its step (and everything after it) must re-run on resume.
    summary = next(
        (root / rc.RUNS_DIR / rid).glob("clinrisk-training-*/merge-features/features/summary.json")
    )
    summary.write_text(summary.read_text() + " ")
    versions = _versions(root)
    known = {p.name for p in (root / rc.RUNS_DIR).iterdir()}
    resumed = _start(out, "resume", "--resume", rid)
    assert resumed.wait(timeout=1800) == 0, (out / "resume.err").read_text()
    (new,) = {p.name for p in (root / rc.RUNS_DIR).iterdir()} - known
    logs = {p.name for p in rc.RunDirs(root, new).logs.glob("*.log")}
    assert "generate-validate-shard-0.log" not in logs and "merge-data.log" not in logs  # from the cache
    assert {"merge-features.log", f"{FUSED_MODEL_TASK}.log"} <= logs  # re-ran
    assert _record(root, new)["resumed_from"] == rid
    assert _versions(root) - versions <= 1  # a resumed run registers once (or reuses the same bundle)
    assert (root / "latest").resolve() == Path(_record(root, new)["pipeline_dir"])
    assert check_store(out) == []
    store["resumed"] = new


SITECUSTOMIZE = textwrap.dedent(
    """
    # Test-only fault injection: make train_step raise once, while the marker file exists.
    import os
    from pathlib import Path

    marker = Path(os.environ["CLINRISK_TEST_FAIL_TRAIN_ONCE"])
    import clinrisk.steps as _steps

    _real = _steps.train_step

    def _failing_once(*args, **kwargs):
        if marker.exists():
            marker.unlink()
            raise RuntimeError("injected failure in train")
        return _real(*args, **kwargs)

    _steps.train_step = _failing_once
    """
)


def test_sigkill_of_the_runner_then_a_failing_run_then_resume(store: dict[str, Any], tmp_path: Path) -> None:
    out, root = store["out"], store["root"]
    assert "resumed" in store, "needs the previous tests' store"
    known = {p.name for p in (root / rc.RUNS_DIR).iterdir()}
    killed = _start(out, "kill")
    kid = _new_run(root, known, killed)
    _wait_step(root, kid, "plan-generation", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert any("recorded running" in p for p in check_store(out))  # until the next run recovers it
    # The next run recovers the dead one, and fails once in train (injected through sitecustomize).
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "fail-once"
    marker.touch()
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "CLINRISK_TEST_FAIL_TRAIN_ONCE": str(marker)}  # fmt: skip
    known = {p.name for p in (root / rc.RUNS_DIR).iterdir()}
    failing = _start(out, "fail", "--resume", store["resumed"], env=env)
    assert failing.wait(timeout=1800) == 2
    lines = _err(out, "fail")
    assert len(lines) == 1 and lines[0].startswith("error: pipeline clinrisk-training failed"), lines
    (fid,) = {p.name for p in (root / rc.RUNS_DIR).iterdir()} - known
    assert _record(root, kid)["status"] == rc.ABANDONED
    assert all(r.info.status == "KILLED" for r in _mlflow_runs(root, kid))
    assert _record(root, fid)["status"] == rc.FAILED
    assert [r.info.status for r in _mlflow_runs(root, fid)] == ["FAILED"]
    assert (root / "latest").resolve() == Path(_record(root, store["resumed"])["pipeline_dir"])
    _no_orphans(root)
    assert check_store(out) == []
    versions = _versions(root)
    again = _start(out, "fail-resume", "--resume", fid, env=env)
    assert again.wait(timeout=1800) == 0, (out / "fail-resume.err").read_text()
    (rid,) = {p.name for p in (root / rc.RUNS_DIR).iterdir()} - known - {fid}
    logs = {p.name for p in rc.RunDirs(root, rid).logs.glob("*.log")}
    assert "merge-features.log" not in logs and f"{FUSED_MODEL_TASK}.log" in logs
    assert _versions(root) - versions <= 1
    assert (root / "latest").resolve() == Path(_record(root, rid)["pipeline_dir"])
    _no_orphans(root)
    assert check_store(out) == [], json.dumps(check_store(out))
