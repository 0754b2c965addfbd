"""One pipeline run at a time per run root: run ids, the run lock, run records and the ``latest`` link.

Layout under a run root (``<output_dir>/<run.name>``)::

    .run.lock                     held (fcntl.flock) by the runner for the whole run; holds its id and pid
    runs/<run_id>/run.json        the run record: status running|succeeded|failed|interrupted|abandoned
    runs/<run_id>/logs/           kfp.local's per-task output, one file per task
    runs/<run_id>/.kfp_cache/     kfp.local's task cache (what ``--resume`` reuses)
    runs/<run_id>/clinrisk-training-<timestamp>/   the pipeline's outputs (kfp.local names this folder)
    latest -> runs/<run_id>/clinrisk-training-...  the last successful run (moved atomically)

Every run gets its own pipeline root, so the runner knows its folder without guessing from creation
times. A second runner on the same root fails fast (``error: ... locked by run <id> (pid N)``, exit 2)
instead of waiting: a wait of unknown length inside ``make run`` looks like a hang. The kernel drops the
flock when the holder dies, even by SIGKILL; the next runner then finds the dead run's record still
``running`` and cleans up after it (:func:`recover_abandoned`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from clinrisk.errors import StageError

RUNS_DIR = "runs"
RUN_RECORD = "run.json"
LOCK_FILE = ".run.lock"
STORE_LOCK_FILE = ".store.lock"
LATEST = "latest"
# Every task process of a run inherits these (kfp.local's SubprocessRunner passes the runner's
# environment on): start-tracking tags the MLflow run with the real run id, and a process left behind by
# a killed runner can be recognised as that run's orphan.
RUN_ID_ENV = "CLINRISK_RUN_ID"
RUN_ROOT_ENV = "CLINRISK_RUN_ROOT"
TMP_PATTERNS = (".*.tmp-*", ".*.old-*")

SUCCEEDED, RUNNING, FAILED, INTERRUPTED, ABANDONED = (
    "succeeded",
    "running",
    "failed",
    "interrupted",
    "abandoned",
)


def new_run_id() -> str:
    """``YYYYmmdd-HHMMSS-xxxxxx`` (UTC): sorts by start time, unique without coordination."""
    return f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunDirs:
    """The folders of one pipeline run under its run root."""

    run_root: Path
    run_id: str

    @property
    def dir(self) -> Path:
        return self.run_root / RUNS_DIR / self.run_id

    @property
    def record(self) -> Path:
        return self.dir / RUN_RECORD

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def cache(self) -> Path:
        return self.dir / ".kfp_cache"


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_record(dirs: RunDirs, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the run record (written atomically: temp file + rename)."""
    doc = read_record(dirs.record) or {"run_id": dirs.run_id}
    doc.update(fields)
    dirs.dir.mkdir(parents=True, exist_ok=True)
    tmp = dirs.record.with_name(f".{RUN_RECORD}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, dirs.record)
    return doc


def run_records(run_root: Path) -> list[dict[str, Any]]:
    """Every run record under the run root, oldest first."""
    out = []
    for path in sorted((run_root / RUNS_DIR).glob(f"*/{RUN_RECORD}")):
        doc = read_record(path)
        if doc is not None:
            out.append(doc)
    return out


# --------------------------------------------------------------------------- locks


class RunLock:
    """An exclusive ``fcntl.flock`` on a lock file; the holder writes its run id and pid into it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: TextIO | None = None

    def acquire(self, run_id: str, what: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise StageError(f"{self.path}: cannot lock ({exc.strerror})") from None
            holder = lock_holder(self.path) or {}
            raise StageError(
                f"{what} {self.path.parent} is locked by run {holder.get('run_id', '?')} "
                f"(pid {holder.get('pid', '?')}); wait for it to finish or use another run.name/output_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"run_id": run_id, "pid": os.getpid(), "since": now_iso()}))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.seek(0)
                self._fh.truncate()
            self._fh.close()  # closing drops the flock
            self._fh = None


def lock_holder(path: Path) -> dict[str, Any] | None:
    """The run id and pid written by the current holder (None when unreadable or empty)."""
    try:
        doc = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_locked(path: Path) -> bool:
    """Whether a live process holds the flock on ``path`` (probed without blocking)."""
    if not path.exists():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def locked_run(run_root: Path, run_id: str, store_dir: Path | None) -> Iterator[None]:
    """Hold the run root's lock (and the store's, when a local MLflow store lives outside the run root)."""
    locks = [RunLock(run_root / LOCK_FILE)]
    if store_dir is not None and not store_dir.resolve().is_relative_to(run_root.resolve()):
        locks.append(RunLock(store_dir / STORE_LOCK_FILE))
    held: list[RunLock] = []
    try:
        for lock in locks:
            lock.acquire(run_id, "run root" if lock is locks[0] else "MLflow store")
            held.append(lock)
        yield
    finally:
        for lock in reversed(held):
            lock.release()


# --------------------------------------------------------------------------- latest, temp folders


def move_latest(run_root: Path, pipeline_dir: Path) -> None:
    """Point ``latest`` at ``pipeline_dir`` atomically: a temp symlink renamed over the old one."""
    target = os.path.relpath(pipeline_dir, run_root)
    tmp = run_root / f".{LATEST}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, run_root / LATEST)


def remove_temp_dirs(root: Path) -> list[Path]:
    """Delete the ``.x.tmp-*`` / ``.x.old-*`` leftovers of interrupted atomic writes below ``root``."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for pattern in TMP_PATTERNS:
        for path in sorted(root.rglob(pattern), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            removed.append(path)
    return removed


def temp_dirs(root: Path) -> list[Path]:
    return [p for pattern in TMP_PATTERNS for p in root.rglob(pattern)] if root.is_dir() else []


# --------------------------------------------------------------------------- processes of a run


def run_processes(run_root: Path, run_id: str | None = None) -> list[Any]:
    """Live processes started for a run under ``run_root`` (found by the environment every task inherits),
    excluding this process and its ancestors."""
    import psutil

    root = str(run_root.resolve())
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in mine:
            continue
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get(RUN_ROOT_ENV) != root:
            continue
        if run_id is not None and env.get(RUN_ID_ENV) != run_id:
            continue
        found.append(proc)
    return found


def kill_processes(procs: list[Any], grace_s: float = 3.0) -> None:
    import psutil

    from clinrisk.interrupts import wait_gone

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    for proc in wait_gone(procs, grace_s):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    wait_gone(procs, grace_s)


# --------------------------------------------------------------------------- MLflow runs of a pipeline run


def terminate_tracking_runs(
    tracking_uri: str, run_id: str, status: str, replace: tuple[str, ...] = ("RUNNING",)
) -> list[str]:
    """Mark every MLflow run tagged ``kfp.run_id=<run_id>`` whose status is in ``replace`` (by default the
    still-RUNNING ones) as ``status``; returns their ids.

    Used when the runner itself is signalled or finds a dead runner's run: the DAG's exit handler cannot
    run then, or (signalled) may have run while its tasks were being stopped and closed the run FAILED,
    which the runner, knowing why the DAG failed, corrects with ``replace=("RUNNING", "FAILED")``.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    runs = [
        r
        for r in client.search_runs(experiments, filter_string=f"tags.`kfp.run_id` = '{run_id}'")
        if r.info.status in replace
    ]
    for run in runs:
        client.set_terminated(run.info.run_id, status=status)
    return [r.info.run_id for r in runs]


def init_store(tracking_uri: str) -> None:
    """Create a local MLflow store's schema under a lock, before any task touches it.

    Two processes opening a new sqlite store at once both try to create MLflow's tables and one fails
    (``table experiments already exists``); the schema is created once, here, with the store's lock held.
    """
    store = local_store_path(tracking_uri)
    if store is None or not tracking_uri.startswith("sqlite:///"):
        return
    store.mkdir(parents=True, exist_ok=True)
    # MLflow announces the schema creation at INFO on its own stderr handler; not news for a user.
    db_log = logging.getLogger("mlflow.store.db.utils")
    level = db_log.level
    with open(store / ".init.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # a short, bounded wait: other inits only
        from mlflow.tracking import MlflowClient

        db_log.setLevel(logging.WARNING)
        try:
            MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).search_experiments(
                max_results=1
            )
        finally:
            db_log.setLevel(level)


def recover_abandoned(run_root: Path, tracking_uri: str | None) -> list[str]:
    """With the lock held, any record still ``running`` belongs to a runner that died (SIGKILL, power).

    Stop its orphans, delete its temp folders, mark its MLflow runs KILLED and its record ``abandoned``.
    Returns the run ids recovered.
    """
    recovered = []
    for doc in run_records(run_root):
        if doc.get("status") != RUNNING:
            continue
        rid = str(doc["run_id"])
        dirs = RunDirs(run_root, rid)
        kill_processes(run_processes(run_root, rid))
        remove_temp_dirs(dirs.dir)
        if tracking_uri:
            with contextlib.suppress(Exception):
                terminate_tracking_runs(tracking_uri, rid, "KILLED")
        write_record(dirs, status=ABANDONED, finished=now_iso(), note="runner died; recovered by a later run")
        recovered.append(rid)
    return recovered


def local_store_path(uri: str) -> Path | None:
    """Directory of a local MLflow store (``sqlite:///``, ``file://`` or a bare path); None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" not in uri:
        return Path(uri)
    return None
