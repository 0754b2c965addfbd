"""The evaluation's patient-cluster bootstraps as independent jobs, spread over processes.

Every bootstrap of an evaluation (per label set: the whole test set, the oracle's panel, each slice level)
resamples the same patients (one shared resample matrix) and needs nothing from the others, so they can
run side by side. Results are bit-identical to running them one after another: each job computes the same
:func:`clinrisk.metrics.bootstrap_chunk` calls on the same arrays, chunked the same way, and the values
come back pickled, exactly.

Why processes: the bootstrap is single-threaded numpy (ufuncs, ``cumsum``, ``reduceat``, the batched
Newton fits); OpenBLAS threads gained nothing on it (measured: the 2M-row evaluate took 21.2 s with one
BLAS thread and 23.3 s with two). With N workers the caller's process takes one share and N − 1 spawned
processes the others (spawn, not fork: the parent has polars' thread pool running). Jobs are assigned
largest first to the least-loaded share (rows x panel size as the cost), which is deterministic.

The resamples are streamed, never held. Every job's B replicates are computed in two fixed blocks,
``[0, B//2)`` and ``[B//2, B)`` (:func:`replicate_blocks`; the same for any number of workers, so the
result does not depend on it), and each block in chunks of :func:`chunk_replicates` replicates: the
process computing a block draws one chunk of the resample counts
(:func:`clinrisk.metrics.cluster_count_chunks`), runs every one of its jobs on it, and drops it. A process
so holds at most about :data:`COUNT_CHUNK_BYTES` of counts whatever the number of patients, where the
whole (B, patients) matrix was the evaluation's largest per-patient array (at 20M raw rows 2 × 50 MB of
the step's peak even when each process held only its block). With two or more processes this one
computes the first block and a spawned worker the second; the worker draws and drops the first block's
stream to reach its own (a multinomial draw cannot jump ahead).

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
#: Resample counts one process holds at a time (uint8 in practice: replicates x patients bytes).
COUNT_CHUNK_BYTES = 8 * 2**20


def replicate_blocks(n_boot: int) -> tuple[tuple[int, int], ...]:
    """The replicate ranges ``[lo, hi)`` a job is computed in: two halves, fixed whatever the number of
    workers (one block below two replicates)."""
    if n_boot < 1:
        raise StageError(f"evaluate.bootstrap_replicates: must be >= 1, got {n_boot}")
    return ((0, n_boot // 2), (n_boot // 2, n_boot)) if n_boot >= 2 else ((0, n_boot),)


def chunk_replicates(n_patients: int, block: int) -> int:
    """Replicates per drawn chunk of the counts: :data:`COUNT_CHUNK_BYTES` worth of patients, at most the
    block. It depends only on the patients and the block, so the chunks, and the results to the last bit,
    are the same for any number of workers."""
    return max(1, min(block, COUNT_CHUNK_BYTES // max(n_patients, 1)))


@dataclass(frozen=True)
class BootstrapData:
    """What every job reads: labels per label set, scores and the oracle risk (rows sorted by descending
    score, :func:`clinrisk.metrics.descending_order`), patient codes, the slices' rows (``row_sets``: bit
    masks over the rows, :func:`numpy.packbits`), and how the resamples are drawn (``n_patients`` codes,
    ``n_boot`` replicates from ``seed``)."""

    ys: dict[str, FloatArray]
    p: FloatArray
    p_oracle: FloatArray
    codes: npt.NDArray[np.int64]
    row_sets: tuple[npt.NDArray[np.uint8], ...]
    n_patients: int
    n_boot: int
    seed: int
    tau: float
    p_t: float

    def rows(self, index: int) -> npt.NDArray[np.bool_]:
        """Row set ``index`` as a boolean mask."""
        return np.unpackbits(self.row_sets[index], count=self.p.size).view(np.bool_)


@dataclass(frozen=True)
class BootstrapJob:
    """One bootstrap: label set ``label`` on the rows of ``data.row_sets[rows]`` (None: all).

    ``with_oracle`` adds the oracle metrics (expected AUC, oracle and excess Brier) to the model's panel;
    ``oracle_scores`` scores the oracle risk itself (clipped to [0, 1]) instead of the model."""

    label: str
    rows: int | None = None
    only: tuple[str, ...] | None = None
    with_oracle: bool = False
    oracle_scores: bool = False

    def cost(self, data: BootstrapData) -> float:
        """Relative work: rows times the panel's size (a full panel's fits cost about 3 slice metrics)."""
        rows = data.p.size if self.rows is None else int(data.rows(self.rows).sum())
        return rows * (len(self.only) if self.only is not None else 3 * len(M.PANEL_METRICS))


@dataclass(frozen=True)
class CountSumsJob:
    """Per replicate, how many drawn patients each of ``members`` holds (patient sets as boolean masks over
    the codes; :func:`clinrisk.metrics.count_sums`): the patient-level metrics' bootstrap. Its result's
    replicates are ``{"sums": (replicates, sets)}``, with no point estimates."""

    members: tuple[npt.NDArray[np.bool_], ...]

    def cost(self, data: BootstrapData) -> float:
        return float(data.n_patients * len(self.members)) / 8  # a gather and a sum per set: cheap


Job = BootstrapJob | CountSumsJob


class _JobRows:
    """The rows each job of a chunk reads, built per chunk (the slices' subsets are not held between
    chunks) and shared by consecutive jobs on the same slice."""

    def __init__(self, data: BootstrapData) -> None:
        self.data = data
        self._key: int | None = None
        self._subset: tuple[npt.NDArray[np.bool_], FloatArray, npt.NDArray[np.int64]] | None = None

    def of(self, job: BootstrapJob) -> M.BootstrapRows:
        d = self.data
        p = np.clip(d.p_oracle, 0, 1) if job.oracle_scores else d.p
        po: FloatArray | None = d.p_oracle if job.with_oracle else None
        y, codes = d.ys[job.label], d.codes
        if job.rows is None:
            return M.BootstrapRows.of(y, p, codes, po)
        if self._key != job.rows or self._subset is None:
            self._subset = None  # not alive beside the next slice's
            mask = d.rows(job.rows)
            self._subset, self._key = (mask, d.p[mask], d.codes[mask]), job.rows
        mask, p_rows, codes_rows = self._subset
        p_rows = np.clip(p[mask], 0, 1) if job.oracle_scores else p_rows
        po_rows = None if po is None else po[mask]
        # The subset's labels, scores and codes (and oracle risk) share the bootstrap's memory budget.
        return M.BootstrapRows.of(y[mask], p_rows, codes_rows, po_rows, copies=3 + (po_rows is not None))


def run_block(data: BootstrapData, jobs: Sequence[Job], part: int) -> list[Replicates]:
    """Point estimates and the replicates of block ``part`` (:func:`replicate_blocks`) of every job: the
    block's counts are drawn a chunk at a time and every job runs on each chunk before the next is drawn."""
    lo, hi = replicate_blocks(data.n_boot)[part]
    size = chunk_replicates(data.n_patients, hi - lo)
    points: list[dict[str, float]] = [{} for _ in jobs]
    reps: list[dict[str, list[FloatArray]]] = [{} for _ in jobs]
    for counts in M.cluster_count_chunks(data.n_patients, data.seed, lo, hi, size):
        rows = _JobRows(data)
        for i, job in enumerate(jobs):
            if isinstance(job, CountSumsJob):
                got = {"sums": M.count_sums(counts, job.members)}
            else:
                r = rows.of(job)
                if not points[i]:
                    points[i] = M.bootstrap_point(r, tau=data.tau, p_t=data.p_t, only=job.only)
                got = M.bootstrap_chunk(r, counts, points[i], tau=data.tau, p_t=data.p_t, only=job.only)
                del r
            for k, v in got.items():
                reps[i].setdefault(k, []).append(v)
        del rows, counts  # the next chunk is drawn without this one alive
    out: list[Replicates] = []
    for point, rep in zip(points, reps, strict=True):
        values = {k: np.concatenate(v) for k, v in rep.items()}
        out.append(({k: point[k] for k in values if k in point}, values))
    return out


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


def save_data(data: BootstrapData, folder: Path) -> None:
    """Write ``data`` into ``folder`` for the workers: one ``.npy`` per array, the rest as JSON (exact: JSON
    floats round-trip)."""
    arrays: dict[str, Any] = {"p": data.p, "p_oracle": data.p_oracle, "codes": data.codes}
    arrays |= {f"y_{i}": y for i, y in enumerate(data.ys.values())}
    arrays |= {f"rows_{i}": r for i, r in enumerate(data.row_sets)}
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", a, allow_pickle=False)
    meta = {
        "labels": list(data.ys),
        "n_row_sets": len(data.row_sets),
        "n_patients": data.n_patients,
        "n_boot": data.n_boot,
        "seed": data.seed,
        "tau": data.tau,
        "p_t": data.p_t,
    }
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
        codes=arr("codes"),
        row_sets=tuple(arr(f"rows_{i}") for i in range(meta["n_row_sets"])),
        n_patients=meta["n_patients"],
        n_boot=meta["n_boot"],
        seed=meta["seed"],
        tau=meta["tau"],
        p_t=meta["p_t"],
    )


# The spawned workers' copy of the data, set once per process by the pool's initializer.
_WORKER_DATA: list[BootstrapData] = []


def _init_worker(folder: str) -> None:
    threadpool_limits(BLAS_THREADS, user_api="blas")  # for the whole life of this worker process
    _WORKER_DATA[:] = [load_data(Path(folder))]


def _worker_block(jobs: Sequence[Job], part: int) -> list[Replicates]:
    return run_block(_WORKER_DATA[0], jobs, part)


class BootstrapPool:
    """Runs bootstrap jobs over ``workers`` processes (this one included); use as a context manager.

    Process k computes replicate block k mod (number of blocks): with two processes, this one the first
    block of every job and the spawned worker the second; the processes on one block share its jobs by
    cost. One pool serves every batch of an evaluation, so the workers start (and receive the data) once;
    with one worker, or while no batch has held more than one job, no process is started."""

    def __init__(self, data: BootstrapData, workers: int = 1) -> None:
        if workers < 1:
            raise StageError(f"evaluate.workers: must be >= 1 once resolved, got {workers}")
        self.data = data
        self.workers = workers
        self._executors: dict[int, ProcessPoolExecutor] = {}  # per replicate block, its spawned processes
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
        """Spawned processes per replicate block, and the blocks this process computes."""
        n_parts = len(replicate_blocks(self.data.n_boot))
        spawned: dict[int, int] = {}
        for k in range(1, self.workers):
            spawned[k % n_parts] = spawned.get(k % n_parts, 0) + 1
        mine = {k for k in range(n_parts) if k == 0 or k not in spawned}
        return spawned, mine

    def _start(self) -> None:
        spawned, _ = self._layout()
        # The data goes by file, not as initargs: spawn writes initargs into a pipe before the child
        # reads them, and a child that dies first (an unguarded __main__, the OOM killer) would leave
        # that write, and the evaluation, blocked for good once they outgrow the pipe's 64 KiB.
        self._tmp = tempfile.TemporaryDirectory(prefix="clinrisk-bootstrap-")
        save_data(self.data, Path(self._tmp.name))
        for part, n in sorted(spawned.items()):
            self._executors[part] = ProcessPoolExecutor(
                n, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(self._tmp.name,)
            )

    def run(self, jobs: Sequence[Job]) -> list[Replicates]:
        """Every job's result, in the order given."""
        n_parts = len(replicate_blocks(self.data.n_boot))
        if not self._executors and (self.workers == 1 or len(jobs) <= 1):
            blocks = [run_block(self.data, jobs, k) for k in range(n_parts)]
            return [joined([b[i] for b in blocks]) for i in range(len(jobs))]
        if not self._executors:
            self._start()
        spawned, mine = self._layout()
        costs = [job.cost(self.data) for job in jobs]
        futures: list[tuple[int, list[int], Future[list[Replicates]]]] = []
        here: list[tuple[int, list[int]]] = []
        for part in range(n_parts):
            # This process (when it computes the block) and the block's spawned processes share its jobs.
            split = shares(costs, (part in mine) + spawned.get(part, 0))
            if part in mine:
                here.append((part, split.pop(0)))
            futures += [
                (part, share, self._executors[part].submit(_worker_block, [jobs[i] for i in share], part))
                for share in split
                if share
            ]
        results: dict[tuple[int, int], Replicates] = {}
        for part, share in here:
            got = run_block(self.data, [jobs[i] for i in share], part)
            results.update(zip(((i, part) for i in share), got, strict=True))
        try:
            for part, share, fut in futures:
                results.update(zip(((i, part) for i in share), fut.result(), strict=True))
        except BrokenProcessPool as e:
            raise StageError(
                f"evaluate: a bootstrap worker process died ({e}); nothing was published. The workers are "
                'spawned: a script that evaluates needs an `if __name__ == "__main__":` guard'
            ) from None
        return [joined([results[(i, k)] for k in range(n_parts)]) for i in range(len(jobs))]
