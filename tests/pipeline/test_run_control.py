"""Fast checks of the run machinery without running the pipeline: locks, `latest`, records, the task-cache
content check, the output router, process-tree stopping and the store checker."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from clinrisk import run_control as rc
from clinrisk import task_cache
from clinrisk.errors import StageError
from clinrisk.integrity import check_store
from clinrisk.interrupts import descendants, stop_descendants, wait_gone
from clinrisk.run_progress import TaskOutputRouter


def test_run_ids_are_unique_and_sort_by_time() -> None:
    ids = [rc.new_run_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(len(i.split("-")) == 3 for i in ids)


def test_second_lock_fails_fast_naming_the_holder(tmp_path: Path) -> None:
    with rc.locked_run(tmp_path, "run-a", None):
        assert rc.is_locked(tmp_path / rc.LOCK_FILE)
        with (
            pytest.raises(StageError, match=r"locked by run run-a \(pid \d+\)"),
            rc.locked_run(tmp_path, "run-b", None),
        ):
            pass
    assert not rc.is_locked(tmp_path / rc.LOCK_FILE)
    with rc.locked_run(tmp_path, "run-b", None):  # released: the next run gets it
        pass


def test_lock_held_by_another_process_and_dropped_when_it_dies(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from clinrisk import run_control as rc
        with rc.locked_run(Path({str(tmp_path)!r}), "other", None):
            print("held", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with (
            pytest.raises(StageError, match=f"locked by run other \\(pid {proc.pid}\\)"),
            rc.locked_run(tmp_path, "me", None),
        ):
            pass
        proc.kill()  # SIGKILL: the kernel drops the flock
        proc.wait()
        with rc.locked_run(tmp_path, "me", None):
            pass
    finally:
        proc.kill()


def test_store_outside_the_run_root_is_locked_too(tmp_path: Path) -> None:
    store = tmp_path / "shared-store"
    with (
        rc.locked_run(tmp_path / "a", "run-a", store),
        pytest.raises(StageError, match=r"MLflow store .* locked by run run-a"),
        rc.locked_run(tmp_path / "b", "run-b", store),
    ):
        pass


def test_latest_moves_atomically(tmp_path: Path) -> None:
    first = tmp_path / "runs" / "a" / "p"
    second = tmp_path / "runs" / "b" / "p"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    rc.move_latest(tmp_path, first)
    assert (tmp_path / "latest").resolve() == first
    rc.move_latest(tmp_path, second)
    assert (tmp_path / "latest").resolve() == second
    assert os.readlink(tmp_path / "latest") == "runs/b/p"  # relative: the output dir can move
    assert not list(tmp_path.glob(".latest.tmp-*"))


def test_remove_temp_dirs(tmp_path: Path) -> None:
    (tmp_path / "x" / ".features.tmp-1234abcd" / "a").mkdir(parents=True)
    (tmp_path / "x" / ".bundle.old-99").mkdir(parents=True)
    (tmp_path / "x" / "features").mkdir()
    assert len(rc.temp_dirs(tmp_path)) == 2
    rc.remove_temp_dirs(tmp_path)
    assert rc.temp_dirs(tmp_path) == []
    assert (tmp_path / "x" / "features").is_dir()


def _cache_entry(cache: Path, key: str, uri: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    art = {"__kfp_artifact__": True, "schema_title": "system.Artifact", "name": "a", "uri": str(uri)}
    (cache / f"{key}.json").write_text(json.dumps({"out": art, "Output": [0, 1]}))


def test_resume_cache_drops_changed_and_unhashed_entries(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "old"
    good, bad = run / "p" / "good", run / "p" / "bad"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    (good / "x.parquet").write_bytes(b"abc")
    (bad / "y.parquet").write_bytes(b"def")
    cache = run / ".kfp_cache"
    _cache_entry(cache, "k_good", good)
    _cache_entry(cache, "k_bad", bad)
    assert task_cache.record_hashes(cache, run) == 2
    _cache_entry(cache, "k_late", good)  # written after the hashes: never verified
    (bad / "y.parquet").write_bytes(b"corrupted")
    dest = tmp_path / "runs" / "new" / ".kfp_cache"
    assert task_cache.seed(cache, dest) == 1
    assert sorted(p.name for p in dest.glob("k_*.json")) == ["k_good.json"]
    # the hashes travel with the entry, so a resume of the resume still verifies it
    assert set(json.loads((dest / task_cache.HASHES_FILE).read_text())) == {"k_good"}


def test_router_files_each_task_and_prints_one_line_per_step(tmp_path: Path) -> None:
    term = io.StringIO()
    router = TaskOutputRouter(tmp_path / "logs", term, shard_total=lambda: 2)
    router.write("10:00:00.000 - INFO - Executing task \x1b[96m'train'\x1b[0m\n")
    router.write('    {"inputs": {"parameterValues": {"config_yaml": "run: ..."}}}\n')
    router.write("10:00:01.000 - INFO - Task 'train' finished with status \x1b[92mSUCCESS\x1b[0m\n")
    for _ in range(2):
        router.write("INFO - Executing task 'generate-shard'\n")
        router.write("INFO - Task 'generate-shard' finished with status SUCCESS\n")
    router.write("INFO - Executing task 'evaluate'\nValueError: boom\n")
    router.write("ERROR - Task 'evaluate' finished with status FAILURE\n")
    router.close_files()
    out = term.getvalue()
    assert "config_yaml" not in out
    assert "✓ train" in out
    assert "2/2 tasks" in out
    assert "x evaluate" in out and "FAILED" in out and "ValueError: boom" in out
    assert "config_yaml" in (tmp_path / "logs" / "train.log").read_text()
    assert (tmp_path / "logs" / "generate-shard-1.log").is_file()
    assert len(out.splitlines()) == 5


def test_a_run_leaves_the_root_loggers_handlers_as_it_found_them(tmp_path: Path) -> None:
    """kfp.local's per-task logger contexts restore handlers concurrently and could leave a
    ``StreamHandler`` bound to a run's router on the root logger; a later run in the same process then
    wrote its lines into the earlier run's logs and progress line."""
    import logging

    from clinrisk.pipeline_runner import quiet_runner

    root = logging.getLogger()
    before, level = root.handlers[:], root.level
    first = TaskOutputRouter(tmp_path / "first", io.StringIO(), shard_total=lambda: 2)
    with quiet_runner(first):
        # What a racy restore leaves behind: a handler writing to the redirected stdout (the router).
        root.addHandler(logging.StreamHandler(sys.stdout))
    assert root.handlers == before and root.level == level
    term = io.StringIO()
    second = TaskOutputRouter(tmp_path / "second", term, shard_total=lambda: 2)
    with quiet_runner(second):
        logging.getLogger("kfp").info("Executing task 'train'")
    first.close_files()
    second.close_files()
    assert not (tmp_path / "first" / "train.log").exists()
    assert "train" in (tmp_path / "second" / "train.log").read_text()


def test_verbose_router_passes_everything_through(tmp_path: Path) -> None:
    term = io.StringIO()
    router = TaskOutputRouter(tmp_path / "logs", term, verbose=True)
    router.write("INFO - Executing task 'train'\nsome output\n")
    router.close_files()
    assert term.getvalue() == "INFO - Executing task 'train'\nsome output\n"


def test_stop_descendants_stops_the_whole_tree() -> None:
    # A child that starts a grandchild and ignores SIGTERM: both must be gone afterwards.
    code = textwrap.dedent(
        """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print("up", flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(tree) == 2
    stop_descendants(grace_s=0.5)
    proc.wait(timeout=10)
    time.sleep(0.2)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_zombie_that_nobody_reaps_counts_as_gone() -> None:
    # A parent that never waits for its child: once the child exits it stays a zombie (as an orphaned task
    # does under a PID 1 that does not reap). Waiting for it must not run out the timeout, and it is not
    # among the live descendants (the runner's reaper kept stalling on such zombies while kfp.local
    # started the DAG's exit handler unwatched; it then closed an interrupted run's MLflow run FAILED).
    code = textwrap.dedent(
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(child.pid, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        child.kill()
        deadline = time.monotonic() + 10
        while child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.status() == psutil.STATUS_ZOMBIE
        assert child.pid not in {p.pid for p in descendants()}
        started = time.monotonic()
        assert wait_gone([child], timeout=60) == []
        assert time.monotonic() - started < 30  # returned at once, not at the timeout
        assert stop_descendants(grace_s=60) == 1  # the parent only
        assert parent.wait(timeout=10) != 0
    finally:
        parent.kill()
        parent.wait()


def test_a_signal_stops_pool_workers_but_spares_the_resource_tracker() -> None:
    # In a process of its own: stop_descendants would stop every process below pytest too.
    code = textwrap.dedent(
        """
        import json, time
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context
        from clinrisk.interrupts import descendants, is_live, is_own_resource_tracker, stop_descendants
        ex = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
        ex.submit(time.sleep, 0).result(timeout=60)
        tree = descendants()
        trackers = [p for p in tree if is_own_resource_tracker(p)]
        n = stop_descendants(grace_s=5, spare=is_own_resource_tracker)
        print(json.dumps({"trackers": len(trackers), "others": len(tree) - len(trackers), "signalled": n,
                          "tracker_live": all(is_live(p) for p in trackers),
                          "others_live": [p.pid for p in tree if p not in trackers and is_live(p)]}))
        ex.shutdown(wait=False, cancel_futures=True)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["trackers"] == 1 and out["tracker_live"]
    assert out["others"] >= 1 and out["signalled"] == out["others"] and out["others_live"] == []
    assert "Traceback" not in r.stderr and "resource_tracker" not in r.stderr


def test_an_interrupted_runs_mlflow_run_is_killed_even_if_the_exit_handler_failed_it(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc.init_store(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("e")
    runs = {}
    for name, kfp_run, status in [
        ("failed", "r1", "FAILED"),  # what the exit handler does when it sees a stopped task
        ("running", "r1", "RUNNING"),
        ("finished", "r1", "FINISHED"),
        ("other", "r2", "RUNNING"),
    ]:
        run = client.create_run(exp, tags={"kfp.run_id": kfp_run}, run_name=name)
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status=status)
        runs[name] = run.info.run_id
    # A dead runner's run (recover_abandoned) or a failed one: only RUNNING runs are closed.
    assert rc.terminate_tracking_runs(uri, "r1", "FAILED") == [runs["running"]]
    client.set_terminated(runs["running"], status="RUNNING")
    # Interrupted: the runner's verdict replaces the exit handler's.
    closed = rc.terminate_tracking_runs(uri, "r1", "KILLED", replace=("RUNNING", "FAILED"))
    assert sorted(closed) == sorted([runs["failed"], runs["running"]])
    status = {n: client.get_run(r).info.status for n, r in runs.items()}
    assert status == {"failed": "KILLED", "running": "KILLED", "finished": "FINISHED", "other": "RUNNING"}


def test_cli_stage_command_sigterm_one_line_exit_143(tmp_path: Path) -> None:
    # `clinrisk` under the interruptible() wrapper: a long command ended by SIGTERM.
    code = textwrap.dedent(
        """
        import subprocess, sys, time
        from clinrisk.interrupts import interruptible
        with interruptible():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            print("up", flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    child = psutil.Process(proc.pid).children()[0]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err.strip() == "error: interrupted by SIGTERM; nothing was published"
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_checker_finds_each_inconsistency(tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    ok = rc.RunDirs(root, "20260101-000000-aaaaaa")
    (ok.dir / "clinrisk-training-x").mkdir(parents=True)
    rc.write_record(ok, status=rc.SUCCEEDED, finished="2026-01-01T00:01:00+00:00",
                    pipeline_dir=str(ok.dir / "clinrisk-training-x"))  # fmt: skip
    rc.move_latest(root, ok.dir / "clinrisk-training-x")
    assert check_store(tmp_path) == []
    dead = rc.RunDirs(root, "20260101-000100-bbbbbb")
    (dead.dir / "p" / ".features.tmp-0000").mkdir(parents=True)
    rc.write_record(dead, status=rc.RUNNING, pid=999999)
    later = rc.RunDirs(root, "20260101-000200-cccccc")
    (later.dir / "p").mkdir(parents=True)
    rc.write_record(
        later, status=rc.SUCCEEDED, finished="2026-01-01T00:03:00+00:00", pipeline_dir=str(later.dir / "p")
    )
    problems = check_store(tmp_path)
    assert any("recorded running" in p for p in problems)
    assert any("temp folder" in p for p in problems)
    assert any("not at the last successful run" in p for p in problems)
    rc.recover_abandoned(root, None)
    rc.move_latest(root, later.dir / "p")
    assert check_store(root) == []


def test_submit_to_an_unreachable_host_is_one_line_naming_the_endpoint(tmp_path: Path) -> None:
    with socket_closed_port() as port:
        host = f"http://127.0.0.1:{port}"
        proc = subprocess.run(
            [sys.executable, "-m", "clinrisk", "pipeline", "submit", "--host", host,
             "-c", str(Path(__file__).resolve().parents[2] / "configs" / "clinical" / "tiny.yaml")],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: KFP endpoint {host}: unreachable"), proc.stderr


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


def test_resume_needs_a_known_run_with_the_same_config(tmp_path: Path) -> None:
    from clinrisk.errors import ConfigError
    from clinrisk.pipeline_runner import resolve_resume

    dirs = rc.RunDirs(tmp_path, "20260101-000000-aaaaaa")
    rc.write_record(dirs, status=rc.FAILED, config_sha256="abc")
    assert resolve_resume(tmp_path, dirs.run_id, "abc").cache == dirs.cache
    assert resolve_resume(tmp_path, str(dirs.dir), "abc").run_id == dirs.run_id
    with pytest.raises(ConfigError, match="config differs"):
        resolve_resume(tmp_path, dirs.run_id, "other")
    with pytest.raises(ConfigError, match=r"no run 'nope' .*recent: 20260101-000000-aaaaaa"):
        resolve_resume(tmp_path, "nope", "abc")


def test_pipeline_name_matches_the_dag() -> None:
    from pipelines.training import PIPELINE_NAME as DAG_NAME

    from clinrisk.pipeline_runner import PIPELINE_NAME

    assert PIPELINE_NAME == DAG_NAME


def test_shard_total_of_a_resumed_run_comes_from_the_cached_plan(tmp_path: Path) -> None:
    from clinrisk.pipeline_runner import plan_shard_count

    old_plan = tmp_path / "runs" / "old" / "clinrisk-training-1" / "plan-generation" / "plan"
    old_plan.mkdir(parents=True)
    (old_plan / "plan.json").write_text(json.dumps({"n_shards": 3}))
    dirs = rc.RunDirs(tmp_path, "new")
    assert plan_shard_count(dirs) is None
    _cache_entry(dirs.cache, "k_plan", old_plan)
    assert plan_shard_count(dirs) == 3
    # a plan that grouped its shards: the progress bars count the fan-out tasks, one per group
    (old_plan / "task_groups.json").write_text(json.dumps({"groups": [[0, 1], [2]]}))
    assert plan_shard_count(dirs) == 2


def test_metrics_artifacts_get_a_file_so_their_task_can_be_reused(tmp_path: Path) -> None:
    # kfp.local never writes a Metrics artifact's file, and its cache treats a missing file as a miss.
    run = tmp_path / "runs" / "old"
    (run / "p" / "merge-data").mkdir(parents=True)
    uri = run / "p" / "merge-data" / "validation_metrics"
    cache = run / ".kfp_cache"
    cache.mkdir(parents=True)
    art = {"__kfp_artifact__": True, "schema_title": "system.Metrics", "name": "m", "uri": str(uri),
           "metadata": {"rows_in": 10.0}}  # fmt: skip
    (cache / "k.json").write_text(json.dumps({"validation_metrics": art}))
    task_cache.record_hashes(cache, run)
    assert json.loads(uri.read_text()) == {"rows_in": 10.0}
    assert task_cache.seed(cache, tmp_path / "new") == 1


def test_check_store_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clinrisk.cli.app import build_app

    root = tmp_path / "tiny"
    dirs = rc.RunDirs(root, "20260101-000000-aaaaaa")
    rc.write_record(dirs, status=rc.RUNNING, pid=999999)
    result = CliRunner().invoke(build_app(), ["check-store", "--path", str(tmp_path)])
    assert result.exit_code == 1 and "recorded running" in result.output
    rc.recover_abandoned(root, None)
    result = CliRunner().invoke(build_app(), ["check-store", "--path", str(tmp_path)])
    assert result.exit_code == 0 and result.output.startswith("consistent:")


def test_interrupt_that_kfp_trips_over_still_keeps_finished_steps_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After SIGINT, kfp.local may raise on its own (a ValueError looking up the output of a task the signal
    stopped). The finished steps' cache entries must still get their content hashes, or --resume would
    trust none of them and re-run everything (seen in CI); an entry written after the signal is never
    trusted."""
    import pipelines.training

    from clinrisk import pipeline_runner
    from clinrisk.interrupts import Interrupted

    def fake_build(**_kwargs: object) -> object:
        def pipeline(**_arguments: object) -> None:
            dirs = rc.RunDirs(Path(os.environ[rc.RUN_ROOT_ENV]), os.environ[rc.RUN_ID_ENV])
            artifact = dirs.dir / "clinrisk-training-x" / "generate-shard" / "raw_shard"
            artifact.parent.mkdir(parents=True)
            artifact.write_text("rows")
            entry = {"raw_shard": {task_cache.ARTIFACT_MARKER: True, "uri": str(artifact)}}
            dirs.cache.mkdir(parents=True, exist_ok=True)
            finished = dirs.cache / "generate-shard-key.json"  # a step that finished before the signal
            finished.write_text(json.dumps(entry))
            os.utime(finished, (time.time() - 5, time.time() - 5))
            os.kill(os.getpid(), signal.SIGINT)  # the runner's DeferredStop records it
            # DockerRunner caches a task whose container the stop killed as if it had succeeded.
            (dirs.cache / "killed-key.json").write_text(json.dumps(entry))
            raise ValueError("kfp.local: no output for the task the signal stopped")

        return pipeline

    monkeypatch.setattr(pipelines.training, "build_training_pipeline", fake_build)
    config = Path(__file__).resolve().parents[2] / "configs" / "clinical" / "tiny.yaml"
    with pytest.raises(Interrupted):
        pipeline_runner.run_local(
            config, [f"run.output_dir={tmp_path}", "tracking.enabled=false"], progress=io.StringIO()
        )
    (record,) = rc.run_records(tmp_path / "tiny")
    assert record["status"] == rc.INTERRUPTED
    cache = rc.RunDirs(tmp_path / "tiny", record["run_id"]).cache
    hashes = json.loads((cache / task_cache.HASHES_FILE).read_text())
    assert list(hashes) == ["generate-shard-key"] and all(hashes["generate-shard-key"].values())
    # ... so a resumed run is seeded with that step.
    assert task_cache.seed(cache, tmp_path / "seeded") == 1
