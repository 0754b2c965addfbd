"""The evaluation's patient-cluster bootstraps as independent jobs, spread over processes.

Every bootstrap of an evaluation (per label set: the whole test set, the oracle's panel, each slice level)
resamples the same patients (one shared ``counts`` matrix) and needs nothing from the others, so they can
run side by side. Results are bit-identical to running them one after another: each job is the same
:func:`clinrisk.metrics.bootstrap_replicates` call on the same arrays, chunked the same way, and the
values come back pickled, exactly.

Why processes: the bootstrap is single-threaded numpy (ufuncs, ``cumsum``, ``reduceat``, the batched
Newton fits); OpenBLAS threads gained nothing on it (measured: the 2M-row evaluate took 21.2 s with one
BLAS thread and 23.3 s with two). With N workers the caller's process takes one share and N − 1 spawned
processes the others (spawn, not fork: the parent has polars' thread pool running). Jobs are assigned
largest first to the least-loaded share (rows x panel size as the cost), which is deterministic.

Every process runs BLAS on one thread (:data:`BLAS_THREADS`): a threaded dot product sums in an order
that depends on the thread count, so the same evaluation gave different last bits on machines with
different core counts, and two processes each spinning two BLAS threads on two cores only slowed down.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from clinrisk import metrics as M
from clinrisk.errors import StageError

FloatArray = npt.NDArray[np.float64]
Replicates = tuple[dict[str, float], dict[str, FloatArray]]

#: BLAS threads of every process that computes an evaluation (see the module docstring).
BLAS_THREADS = 1


@dataclass(frozen=True)
class BootstrapData:
    """What every job reads: labels per label set, scores, the oracle risk, and the shared resamples."""

    ys: dict[str, FloatArray]
    p: FloatArray
    p_oracle: FloatArray
    counts: M.IntArray  # the smallest unsigned type in practice (metrics.cluster_counts)
    codes: npt.NDArray[np.int64]
    tau: float
    p_t: float


@dataclass(frozen=True)
class BootstrapJob:
    """One bootstrap: label set ``label`` on the rows ``rows`` selects (None: all).

    ``with_oracle`` adds the oracle metrics (expected AUC, oracle and excess Brier) to the model's panel;
    ``oracle_scores`` scores the oracle risk itself (clipped to [0, 1]) instead of the model."""

    label: str
    rows: npt.NDArray[np.bool_] | None = None
    only: tuple[str, ...] | None = None
    with_oracle: bool = False
    oracle_scores: bool = False

    def cost(self, n_rows: int) -> float:
        """Relative work: rows times the panel's size (a full panel's fits cost about 3 slice metrics)."""
        rows = n_rows if self.rows is None else int(self.rows.sum())
        return rows * (len(self.only) if self.only is not None else 3 * len(M.PANEL_METRICS))


def run_job(data: BootstrapData, job: BootstrapJob) -> Replicates:
    """Point estimates and replicates of one job (:func:`clinrisk.metrics.bootstrap_replicates`)."""
    y = data.ys[job.label]
    p = np.clip(data.p_oracle, 0, 1) if job.oracle_scores else data.p
    po: FloatArray | None = data.p_oracle if job.with_oracle else None
    codes = data.codes
    if job.rows is not None:
        y, p, codes = y[job.rows], p[job.rows], codes[job.rows]
        po = None if po is None else po[job.rows]
    return M.bootstrap_replicates(
        y,
        p,
        None,
        tau=data.tau,
        p_t=data.p_t,
        counts=data.counts,
        codes=codes,
        p_oracle=po,
        only=job.only,
    )


def shares(costs: Sequence[float], n: int) -> list[list[int]]:
    """Job indices split into ``n`` shares of similar total cost: largest first, each to the lightest
    share so far (ties: the lower share, then the lower index, so the split is deterministic)."""
    out: list[list[int]] = [[] for _ in range(max(1, n))]
    load = [0.0] * len(out)
    for i in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        k = min(range(len(out)), key=lambda s: (load[s], s))
        out[k].append(i)
        load[k] += costs[i]
    return out


def save_data(data: BootstrapData, folder: Path) -> None:
    """Write ``data`` into ``folder`` for the workers: one ``.npy`` per array, the rest as JSON (exact:
    JSON floats round-trip)."""
    arrays = {"p": data.p, "p_oracle": data.p_oracle, "counts": data.counts, "codes": data.codes}
    arrays |= {f"y_{i}": y for i, y in enumerate(data.ys.values())}
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", a, allow_pickle=False)
    meta = {"labels": list(data.ys), "tau": data.tau, "p_t": data.p_t}
    (folder / "meta.json").write_text(json.dumps(meta))


def load_data(folder: Path) -> BootstrapData:
    """What :func:`save_data` wrote, memory-mapped read-only (the page cache is shared, not copied)."""
    meta = json.loads((folder / "meta.json").read_text())

    def arr(name: str) -> Any:
        return np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    return BootstrapData(
        ys={name: arr(f"y_{i}") for i, name in enumerate(meta["labels"])},
        p=arr("p"),
        p_oracle=arr("p_oracle"),
        counts=arr("counts"),
        codes=arr("codes"),
        tau=meta["tau"],
        p_t=meta["p_t"],
    )


# The spawned workers' copy of the data, set once per process by the pool's initializer.
_WORKER_DATA: list[BootstrapData] = []


def _init_worker(folder: str) -> None:
    threadpool_limits(BLAS_THREADS, user_api="blas")  # for the whole life of this worker process
    _WORKER_DATA[:] = [load_data(Path(folder))]


def _worker_job(job: BootstrapJob) -> Replicates:
    return run_job(_WORKER_DATA[0], job)


class BootstrapPool:
    """Runs bootstrap jobs over ``workers`` processes (this one included); use as a context manager.

    One pool serves every batch of an evaluation, so the workers start (and receive the data) once."""

    def __init__(self, data: BootstrapData, workers: int = 1) -> None:
        if workers < 1:
            raise StageError(f"evaluate.workers: must be >= 1 once resolved, got {workers}")
        self.data = data
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> BootstrapPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # The data goes by file, not as initargs: spawn writes initargs into a pipe before the child
            # reads them, and a child that dies first (an unguarded __main__, the OOM killer) would leave
            # that write, and the evaluation, blocked for good once they outgrow the pipe's 64 KiB.
            self._tmp = tempfile.TemporaryDirectory(prefix="clinrisk-bootstrap-")
            save_data(self.data, Path(self._tmp.name))
            self._executor = ProcessPoolExecutor(
                self.workers - 1,
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(self._tmp.name,),
            )
        return self._executor

    def run(self, jobs: Sequence[BootstrapJob]) -> list[Replicates]:
        """Every job's result, in the order given."""
        n = min(self.workers, len(jobs))
        if n <= 1:
            return [run_job(self.data, j) for j in jobs]
        n_rows = self.data.p.size
        mine, *theirs = shares([j.cost(n_rows) for j in jobs], n)
        futures: dict[int, Future[Replicates]] = {}
        pool = self._pool()
        for share in theirs:
            for i in share:
                futures[i] = pool.submit(_worker_job, jobs[i])
        results: dict[int, Replicates] = {i: run_job(self.data, jobs[i]) for i in mine}
        try:
            for i, fut in futures.items():
                results[i] = fut.result()
        except BrokenProcessPool as e:
            raise StageError(
                f"evaluate: a bootstrap worker process died ({e}); nothing was published. The workers are "
                'spawned: a script that evaluates needs an `if __name__ == "__main__":` guard'
            ) from None
        return [results[i] for i in range(len(jobs))]
