"""The evaluation's bootstraps over several processes: the same result for any number of workers, one BLAS
thread, a worker that dies or an unguarded script is a clear error (never a hang), and a signal mid-way
leaves no process, folder or output behind."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psutil
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import clinrisk.evaluate_bootstrap as EB
from clinrisk import metrics as M
from clinrisk.config import EvaluateConfig
from clinrisk.errors import StageError
from clinrisk.evaluate import evaluate_predictions
from clinrisk.interrupts import wait_gone
from tests.model.eval_synth import synth_test_frame, write_eval_bundle, write_eval_dataset

CFG = EvaluateConfig(bootstrap_replicates=30, top_k_errors=5)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth() -> tuple[pl.DataFrame, np.ndarray]:
    return synth_test_frame(n_patients=1500, seed=0)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal to the last bit (NaN equal to NaN): compared through JSON, which writes floats exactly."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def test_any_number_of_workers_gives_the_same_evaluation(synth) -> None:
    df, p = synth
    one = evaluate_predictions(CFG, df, p, tau=0.1, p_t=0.1, seed=1, window_years=3, workers=1)
    for workers in (2, 3):
        many = evaluate_predictions(CFG, df, p, tau=0.1, p_t=0.1, seed=1, window_years=3, workers=workers)
        assert _same(one, many), workers
    assert len(one["slices"]) >= 8  # the batch really held many jobs


def test_the_evaluation_does_not_depend_on_the_callers_blas_threads(synth, monkeypatch) -> None:
    """BLAS runs on one thread inside the evaluation whatever the caller set: a threaded dot product sums
    in a thread-count-dependent order (different last bits on machines with different core counts)."""
    df, p = synth
    seen: list[int] = []
    real = EB.run_block

    def spy(data: EB.BootstrapData, jobs: Any, part: int) -> list[EB.Replicates]:
        seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return real(data, jobs, part)

    monkeypatch.setattr(EB, "run_block", spy)
    with threadpool_limits(2, user_api="blas"):
        two = evaluate_predictions(CFG, df, p, tau=0.1, p_t=0.1, seed=1)
    assert seen and set(seen) == {EB.BLAS_THREADS}
    with threadpool_limits(1, user_api="blas"):
        one = evaluate_predictions(CFG, df, p, tau=0.1, p_t=0.1, seed=1)
    assert _same(one, two)


def test_shares_are_balanced_and_deterministic() -> None:
    costs = [5.0, 1.0, 4.0, 3.0, 3.0, 2.0, 2.0]
    split = EB.shares(costs, 2)
    assert sorted(i for s in split for i in s) == list(range(len(costs)))
    loads = [sum(costs[i] for i in s) for s in split]
    assert loads == [10.0, 10.0]
    assert EB.shares(costs, 2) == split  # same input, same split
    assert EB.shares([1.0], 3) == [[0], [], []]
    assert EB.shares(costs, 1) == [[0, 2, 3, 4, 5, 6, 1]]  # largest first


def _small_data(n: int = 4000, seed: int = 0, n_boot: int = 20) -> EB.BootstrapData:
    rng = np.random.default_rng(seed)
    codes, n_pat = M.patient_codes(rng.integers(0, n // 4, n))
    y = (rng.random(n) < 0.2).astype(np.float64)
    p = rng.random(n)
    o = M.descending_order(p)
    half = np.packbits(np.arange(n) % 2 == 0)
    return EB.BootstrapData(
        {"recorded": y[o], "true": y[o]}, p[o], p[o], codes[o], (half,), n_pat, n_boot, 1, 0.2, 0.1
    )


class ExitOnUse(str):
    """A label that ends a spawned worker process abruptly when a job looks it up (``os._exit``: no
    exception, no cleanup, like the OOM killer); in this process it is an ordinary label (this process
    computes the first replicate block of every job)."""

    def __hash__(self) -> int:
        if multiprocessing.parent_process() is not None:
            os._exit(3)
        return str.__hash__(self)


def test_a_worker_that_dies_is_a_stage_error_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    data = _small_data()
    jobs = [EB.BootstrapJob("recorded"), EB.BootstrapJob(ExitOnUse("true"), rows=0)]
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    with pytest.raises(StageError, match="bootstrap worker process died"), EB.BootstrapPool(data, 2) as pool:
        pool.run(jobs)
    left = [c for c in psutil.Process().children(recursive=True) if c.pid not in before and c.is_running()]
    assert [c for c in left if c.status() != psutil.STATUS_ZOMBIE] == []
    assert list(tmp_path.iterdir()) == []  # the data folder the workers read is gone


def test_the_pool_runs_in_process_with_one_worker_or_one_job(monkeypatch) -> None:
    monkeypatch.setattr(EB, "ProcessPoolExecutor", None)  # any attempt to start processes would fail
    data = _small_data()
    jobs = [EB.BootstrapJob("recorded"), EB.BootstrapJob("true", only=("auc",))]
    with EB.BootstrapPool(data, 1) as pool:
        one = pool.run(jobs)
    with EB.BootstrapPool(data, 4) as pool:
        single = pool.run(jobs[:1])
    assert one[0][0] == single[0][0]
    with pytest.raises(StageError, match=r"evaluate\.workers"):
        EB.BootstrapPool(data, 0)


def test_an_unguarded_script_gets_a_clear_error_not_a_hang(tmp_path) -> None:
    """A script without ``if __name__ == "__main__":`` re-runs itself in each spawned worker, which then
    dies. With the data sent as the workers' start-up arguments (far over a pipe's 64 KiB here) that
    blocked the parent's write for good; the data now goes by file."""
    script = tmp_path / "evaluate_unguarded.py"
    script.write_text(
        textwrap.dedent(
            """
            import numpy as np
            from clinrisk import metrics as M
            from clinrisk.evaluate_bootstrap import BootstrapData, BootstrapJob, BootstrapPool
            rng = np.random.default_rng(0)
            n = 200_000
            codes, n_pat = M.patient_codes(rng.integers(0, n // 4, n))
            y = (rng.random(n) < 0.2).astype(float)
            p = rng.random(n)
            data = BootstrapData({"recorded": y, "true": y}, p, p, codes, (), n_pat, 10, 1, 0.2, 0.1)
            with BootstrapPool(data, 2) as pool:
                pool.run([BootstrapJob("recorded", only=("auc",)), BootstrapJob("true", only=("auc",))])
            """
        )
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO, env=env
    )
    assert r.returncode != 0
    assert "bootstrap worker process died" in r.stderr
    assert [f.name for f in tmp_path.iterdir()] == [script.name]


def test_sigterm_mid_bootstrap_stops_the_workers_and_publishes_nothing(tmp_path) -> None:
    df, _ = synth_test_frame(n_patients=6000, seed=4)
    feats = write_eval_dataset(tmp_path, df)
    bundle = write_eval_bundle(tmp_path, df)
    out = tmp_path / "evaluation"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "clinrisk",
        "evaluate",
        "--set",
        "evaluate.bootstrap_replicates=3000",
        "--set",
        "evaluate.workers=2",
        "--bundle",
        str(bundle),
        "--features",
        str(feats),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    workers: list[psutil.Process] = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [c for c in me.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
        if workers and any(tmp.glob("clinrisk-bootstrap-*")):
            break
        time.sleep(0.1)
    assert workers, "no bootstrap worker was started"
    time.sleep(0.5)  # mid-batch
    tree = me.children(recursive=True)  # the workers and multiprocessing's resource tracker
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    text = output.decode()
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "error:" in text and "SIGTERM" in text and "Traceback" not in text
    assert not out.exists() and not list(tmp_path.glob(".evaluation*"))
    assert wait_gone(tree, timeout=10) == []  # the tracker too: it ends with the command
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("value", ["-1", "65", "two"])
def test_a_bad_evaluate_workers_is_one_config_error_naming_the_key(tmp_path, value) -> None:
    from typer.testing import CliRunner

    from clinrisk.cli.app import build_app

    out = tmp_path / "evaluation"
    r = CliRunner().invoke(
        build_app(),
        [
            "evaluate",
            "--set",
            f"evaluate.workers={value}",
            "--bundle",
            str(tmp_path),
            "--features",
            str(tmp_path),
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 2 and "error:" in r.output and "evaluate.workers" in r.output, r.output
    assert "Traceback" not in r.output and not out.exists()


def test_each_process_draws_only_its_block_and_results_equal_one_processs(monkeypatch) -> None:
    """With two processes this one computes the first replicate block of every job (the patient-level
    sums included) and the worker the second; the results equal one process's to the last bit."""
    data = _small_data()
    members = (np.arange(data.n_patients) % 3 == 0, np.arange(data.n_patients) % 2 == 0)
    jobs: list[EB.Job] = [
        EB.BootstrapJob("recorded"),
        EB.BootstrapJob("true", only=("auc", "oe")),
        EB.BootstrapJob("true", rows=0, only=("auc", "cal_slope")),
        EB.BootstrapJob("true", only=("auc",), oracle_scores=True),
        EB.CountSumsJob(members),
    ]
    with EB.BootstrapPool(data, 1) as pool:
        one = pool.run(jobs)
    drawn: list[tuple[int, ...]] = []
    real = M.cluster_count_chunks

    def spy(*args: int) -> Any:
        drawn.append(args[2:])
        return real(*args)

    monkeypatch.setattr(M, "cluster_count_chunks", spy)
    with EB.BootstrapPool(data, 2) as pool:
        two = pool.run(jobs)
        again = pool.run(jobs[:1])  # a later batch reuses the same workers
    assert set(drawn) == {(0, 10, 10)}  # this process: block 0 only (the worker drew block 1)
    for a, b in zip([*one, one[0]], [*two, *again], strict=True):
        assert a[0] == b[0]
        assert a[1].keys() == b[1].keys()
        assert all(np.array_equal(a[1][k], b[1][k], equal_nan=True) for k in a[1])
    assert one[0][1]["auc"].shape == (20,)
    whole = M.cluster_counts(data.n_patients, 20, 1)
    assert np.array_equal(one[-1][1]["sums"], M.count_sums(whole, members))
    # The slice job is the bootstrap of the slice's rows under the same resamples.
    m = data.rows(0)
    pt, reps = M.bootstrap_replicates(
        data.ys["true"][m],
        data.p[m],
        None,
        tau=0.2,
        p_t=0.1,
        counts=whole,
        codes=data.codes[m],
        only=("auc",),
    )
    assert one[2][0]["auc"] == pt["auc"] and np.array_equal(one[2][1]["auc"], reps["auc"], equal_nan=True)


def test_a_block_holds_one_chunk_of_the_resamples_at_a_time(monkeypatch) -> None:
    """The resample counts are streamed: with a small chunk the block never exists whole (the peak falls
    by far more than half), and the replicates are the same (AUC is exact in any chunking)."""
    rng = np.random.default_rng(2)
    n_pat, n = 400_000, 4000
    codes = np.sort(rng.choice(n_pat, n, replace=False)).astype(np.int64)
    p = np.sort(rng.random(n))[::-1].copy()
    y = (rng.random(n) < p).astype(np.float64)
    data = EB.BootstrapData({"true": y}, p, p, codes, (), n_pat, 20, 5, 0.2, 0.1)
    jobs: list[EB.Job] = [EB.BootstrapJob("true", only=("prevalence", "auc"))]

    def traced(chunk_bytes: int) -> tuple[list[EB.Replicates], int]:
        monkeypatch.setattr(EB, "COUNT_CHUNK_BYTES", chunk_bytes)
        tracemalloc.start()
        out = EB.run_block(data, jobs, 0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return out, peak

    whole, peak_whole = traced(10 * n_pat)  # the block (10 replicates) in one chunk
    small, peak_small = traced(n_pat)  # one replicate at a time
    assert EB.chunk_replicates(n_pat, 10) == 1
    assert peak_small < 0.3 * peak_whole, (peak_small, peak_whole)
    assert np.array_equal(whole[0][1]["auc"], small[0][1]["auc"])
    assert whole[0][1]["auc"].shape == (10,)


def test_replicate_blocks_and_chunks() -> None:
    assert EB.replicate_blocks(200) == ((0, 100), (100, 200))
    assert EB.replicate_blocks(1) == ((0, 1),)
    with pytest.raises(StageError, match="bootstrap_replicates"):
        EB.replicate_blocks(0)
    assert EB.chunk_replicates(50_000, 100) == 100  # 2M raw rows: the whole block in one chunk
    assert EB.chunk_replicates(518_079, 100) == EB.COUNT_CHUNK_BYTES // 518_079  # 20M: 16 at a time
    assert EB.chunk_replicates(10**9, 100) == 1
