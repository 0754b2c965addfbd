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

Every job's B replicates are computed in two fixed blocks, ``[0, B//2)`` and ``[B//2, B)``
(:func:`replicate_split`; the same blocks for any number of workers, so the result does not depend on it).
With two or more processes, this one computes the first block of every job and a spawned worker the
second, and each process holds only its block of the resample counts: the (B, patients) matrix is the
evaluation's largest per-patient array, and it had been held whole by both processes (at 20M raw rows
2 × 99 MB of the step's peak).

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
from dataclasses import dataclass, replace
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


def replicate_split(n_boot: int) -> tuple[int, ...]:
    """Where a job's replicates are cut into blocks (:func:`clinrisk.metrics.cluster_count_parts`'s
    ``split_at``): two halves, fixed whatever the number of workers."""
    return (n_boot // 2,) if n_boot >= 2 else ()


@dataclass(frozen=True)
class BootstrapData:
    """What every job reads: labels per label set, scores, the oracle risk, and the shared resamples as
    row blocks (``count_parts``, :func:`replicate_split`; None: a block this process does not hold)."""

    ys: dict[str, FloatArray]
    p: FloatArray
    p_oracle: FloatArray
    count_parts: tuple[M.IntArray | None, ...]  # the smallest unsigned type in practice
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


def run_job(data: BootstrapData, job: BootstrapJob, part: int = 0) -> Replicates:
    """Point estimates and the replicates of block ``part`` of one job
    (:func:`clinrisk.metrics.bootstrap_replicates`)."""
    counts = data.count_parts[part]
    if counts is None:
        raise StageError(f"evaluate: replicate block {part} is not held by this process")
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
        counts=counts,
        codes=codes,
        p_oracle=po,
        only=job.only,
    )


def joined(blocks: Sequence[Replicates]) -> Replicates:
    """One job's result from its blocks' (in block order): every block has the same point estimates."""
    point = blocks[0][0]
    return point, {k: np.concatenate([b[1][k] for b in blocks]) for k in blocks[0][1]}


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


def save_data(data: BootstrapData, folder: Path, parts: Sequence[int]) -> None:
    """Write ``data`` into ``folder`` for the workers: one ``.npy`` per array (of the count blocks, those
    in ``parts``), the rest as JSON (exact: JSON floats round-trip)."""
    arrays: dict[str, Any] = {"p": data.p, "p_oracle": data.p_oracle, "codes": data.codes}
    arrays |= {f"y_{i}": y for i, y in enumerate(data.ys.values())}
    arrays |= {f"counts_{k}": data.count_parts[k] for k in parts}
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", a, allow_pickle=False)
    meta = {"labels": list(data.ys), "tau": data.tau, "p_t": data.p_t, "n_parts": len(data.count_parts)}
    (folder / "meta.json").write_text(json.dumps(meta))


def load_data(folder: Path, part: int) -> BootstrapData:
    """What :func:`save_data` wrote, with count block ``part`` only, memory-mapped read-only (the page cache
    is shared, not copied)."""
    meta = json.loads((folder / "meta.json").read_text())

    def arr(name: str) -> Any:
        return np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    return BootstrapData(
        ys={name: arr(f"y_{i}") for i, name in enumerate(meta["labels"])},
        p=arr("p"),
        p_oracle=arr("p_oracle"),
        count_parts=tuple(arr(f"counts_{k}") if k == part else None for k in range(meta["n_parts"])),
        codes=arr("codes"),
        tau=meta["tau"],
        p_t=meta["p_t"],
    )


# The spawned workers' copy of the data, set once per process by the pool's initializer.
_WORKER_DATA: list[BootstrapData] = []


def _init_worker(folder: str, part: int) -> None:
    threadpool_limits(BLAS_THREADS, user_api="blas")  # for the whole life of this worker process
    _WORKER_DATA[:] = [load_data(Path(folder), part)]


def _worker_job(job: BootstrapJob, part: int) -> Replicates:
    return run_job(_WORKER_DATA[0], job, part)


class BootstrapPool:
    """Runs bootstrap jobs over ``workers`` processes (this one included); use as a context manager.

    Process k computes replicate block k mod (number of blocks): with two processes, this one the first
    block of every job and the spawned worker the second. Once the workers start, this process lets go
    of the blocks it does not compute (``data`` then holds None there). One pool serves every batch of an
    evaluation, so the workers start (and receive the data) once; with one worker, or while no batch has
    held more than one job, no process is started."""

    def __init__(self, data: BootstrapData, workers: int = 1) -> None:
        if workers < 1:
            raise StageError(f"evaluate.workers: must be >= 1 once resolved, got {workers}")
        self.data = data
        self.workers = workers
        self._executors: dict[int, ProcessPoolExecutor] = {}  # per count block, its spawned processes
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> BootstrapPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for ex in self._executors.values():
            ex.shutdown(wait=True, cancel_futures=True)
        self._executors = {}
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _layout(self) -> tuple[dict[int, int], set[int]]:
        """Spawned processes per count block, and the blocks this process computes."""
        n_parts = len(self.data.count_parts)
        spawned: dict[int, int] = {}
        for k in range(1, self.workers):
            spawned[k % n_parts] = spawned.get(k % n_parts, 0) + 1
        mine = {k for k in range(n_parts) if k == 0 or k not in spawned}
        return spawned, mine

    def _start(self) -> None:
        spawned, mine = self._layout()
        # The data goes by file, not as initargs: spawn writes initargs into a pipe before the child
        # reads them, and a child that dies first (an unguarded __main__, the OOM killer) would leave
        # that write, and the evaluation, blocked for good once they outgrow the pipe's 64 KiB.
        self._tmp = tempfile.TemporaryDirectory(prefix="clinrisk-bootstrap-")
        save_data(self.data, Path(self._tmp.name), sorted(spawned))
        for part, n in sorted(spawned.items()):
            self._executors[part] = ProcessPoolExecutor(
                n, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(self._tmp.name, part)
            )
        parts = tuple(c if k in mine else None for k, c in enumerate(self.data.count_parts))
        self.data = replace(self.data, count_parts=parts)

    def run(self, jobs: Sequence[BootstrapJob]) -> list[Replicates]:
        """Every job's result, in the order given."""
        n_parts = len(self.data.count_parts)
        tasks = [(i, k) for i in range(len(jobs)) for k in range(n_parts)]
        if not self._executors and (self.workers == 1 or len(jobs) <= 1):
            got = {t: run_job(self.data, jobs[t[0]], t[1]) for t in tasks}
            return [joined([got[(i, k)] for k in range(n_parts)]) for i in range(len(jobs))]
        if not self._executors:
            self._start()
        spawned, mine = self._layout()
        n_rows = self.data.p.size
        futures: dict[tuple[int, int], Future[Replicates]] = {}
        here: list[tuple[int, int]] = []
        for part in range(n_parts):
            block = [t for t in tasks if t[1] == part]
            if part not in mine:
                futures |= {t: self._executors[part].submit(_worker_job, jobs[t[0]], part) for t in block}
                continue
            # This process and the block's spawned processes (if any) share the block's jobs by cost.
            mine_share, *theirs = shares([jobs[i].cost(n_rows) for i, _ in block], 1 + spawned.get(part, 0))
            here += [block[j] for j in mine_share]
            futures |= {
                block[j]: self._executors[part].submit(_worker_job, jobs[block[j][0]], part)
                for share in theirs
                for j in share
            }
        results: dict[tuple[int, int], Replicates] = {t: run_job(self.data, jobs[t[0]], t[1]) for t in here}
        try:
            for t, fut in futures.items():
                results[t] = fut.result()
        except BrokenProcessPool as e:
            raise StageError(
                f"evaluate: a bootstrap worker process died ({e}); nothing was published. The workers are "
                'spawned: a script that evaluates needs an `if __name__ == "__main__":` guard'
            ) from None
        return [joined([results[(i, k)] for k in range(n_parts)]) for i in range(len(jobs))]
