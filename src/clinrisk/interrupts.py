"""SIGINT/SIGTERM that end a command cleanly: every descendant process is stopped, ``finally`` blocks run.

Python's default SIGTERM ends the interpreter at once: no ``finally`` runs (``atomic_output_dir`` leaves its
``.x.tmp-*`` folder behind) and child processes (KFP task subprocesses, process-pool workers) are orphaned
and keep writing. Here a signal first stops the whole process tree below this process (SIGTERM, then SIGKILL
after a grace period), then surfaces as :class:`Interrupted` so the command unwinds and exits 128+signum.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import psutil

HANDLED = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 3.0


class Interrupted(BaseException):  # like KeyboardInterrupt: a request to stop, not an error
    """The command was asked to stop by a signal; ``exit_code`` is the shell's 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def descendants(pid: int | None = None) -> list[psutil.Process]:
    """Every live process below ``pid`` (default: this one), children first; zombies are not live."""
    try:
        return [p for p in psutil.Process(pid or os.getpid()).children(recursive=True) if is_live(p)]
    except psutil.NoSuchProcess:
        return []


def is_live(proc: psutil.Process) -> bool:
    """Still running: not gone and not a zombie (it has exited; only its parent's wait is missing)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for ``procs`` to exit; returns those still live.

    Not ``psutil.wait_procs``: it waits for a process to disappear, and where PID 1 does not reap orphans
    (this project's CI and dev VMs) a task whose shell parent died first stays a zombie for good, so
    every such wait ran out its whole timeout while kfp.local went on starting tasks unwatched."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if is_live(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if is_live(p)]
    return alive


def is_own_resource_tracker(proc: psutil.Process) -> bool:
    """``proc`` is this process's multiprocessing resource tracker (started with its first process pool).

    A command that unwinds after a signal must leave it running: on exit the pool's semaphores are
    unregistered with it, and a killed tracker is relaunched and prints tracebacks for names it never saw.
    It exits by itself once this process (and the workers, which share its pipe) are gone, cleaning up
    whatever they leaked."""
    try:
        return proc.ppid() == os.getpid() and "multiprocessing.resource_tracker" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def stop_descendants(
    grace_s: float = GRACE_S, pid: int | None = None, spare: Callable[[psutil.Process], bool] | None = None
) -> int:
    """SIGTERM every descendant (but those ``spare`` keeps), SIGKILL those still alive after ``grace_s``;
    repeat until none is left (a dying task may still have forked). Returns how many were signalled."""
    signalled: set[int] = set()
    for _ in range(20):
        procs = [p for p in descendants(pid) if spare is None or not spare(p)]
        if not procs:
            break
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
                signalled.add(proc.pid)
        for proc in wait_gone(procs, grace_s):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        wait_gone(procs, grace_s)
    return len(signalled)


Handler = Callable[[int, FrameType | None], Any]


@contextlib.contextmanager
def signal_handlers(handler: Handler) -> Iterator[None]:
    """Install ``handler`` for SIGINT and SIGTERM (main thread only), restoring the previous ones after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED}
    for s in HANDLED:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """Signal handler for one-shot commands: stop the process tree, then unwind with :class:`Interrupted`."""
    # A second signal while unwinding must not interrupt the cleanup itself.
    for s in HANDLED:
        signal.signal(s, signal.SIG_IGN)
    stop_descendants(spare=is_own_resource_tracker)
    raise Interrupted(signum)


class DeferredStop:
    """Signal handler for the pipeline runner: stop the task processes but let kfp.local unwind on its own.

    Raising inside kfp.local's orchestrator would leave its worker threads scheduling further tasks. Instead
    the task processes are stopped (so every running task fails) and a reaper thread keeps stopping any
    task that is still started until :meth:`close`. A second signal stops everything at once.
    """

    def __init__(self, also_stop: Callable[[], object] | None = None) -> None:
        self.signum: int | None = None
        self.at: float | None = None  # time.time() of the first signal
        # Processes of the run that are not our descendants: with the Docker runner a task is a container
        # the engine started, so only ``also_stop`` (which finds them by their environment) reaches it.
        self._also_stop = also_stop
        self._done = threading.Event()
        self._reaper: threading.Thread | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: no more grace
            stop_descendants(grace_s=0.2)
            raise Interrupted(signum)
        self.signum = signum
        self.at = time.time()
        self._reaper = threading.Thread(target=self._reap, name="clinrisk-reaper", daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        while not self._done.is_set():
            stop_descendants(grace_s=GRACE_S)
            if self._also_stop is not None:
                self._also_stop()
            time.sleep(0.1)

    def close(self) -> None:
        """Stop reaping and make sure nothing below this process survives."""
        self._done.set()
        if self._reaper is not None:
            self._reaper.join(timeout=30)
        if self.signum is not None:
            stop_descendants(grace_s=GRACE_S)
            if self._also_stop is not None:
                self._also_stop()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """For a whole command: SIGINT/SIGTERM stop its process tree and end it with one line on stderr and the
    shell's code (130 for SIGINT, 143 for SIGTERM), never a traceback. Inner code may install its own
    handler for a while (the pipeline runner does)."""
    try:
        with signal_handlers(raise_interrupted):
            yield
    except (Interrupted, KeyboardInterrupt) as exc:
        sig = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
        sys.stderr.write(f"error: interrupted by {signal.Signals(sig).name}; nothing was published\n")
        sys.stderr.flush()
        raise SystemExit(128 + sig) from None
