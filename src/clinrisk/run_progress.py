"""Quiet pipeline runs: kfp.local's task output goes to one log file per task, the terminal gets progress.

kfp.local prints everything to ``sys.stdout`` from its worker threads: a header per task, the task
subprocess's streamed output (which includes the executor's JSON dump of every input and output) and the
task's outputs. :class:`TaskOutputRouter` stands in for ``sys.stdout`` during a run, follows which task each
thread is running (from kfp.local's own ``Executing task 'x'`` / ``Task 'x' finished`` lines) and writes each
task's lines to ``logs/<task>[-<n>].log``. The terminal shows one line per step with its elapsed time; the
per-shard steps (component names ending in ``-shard``) show progress over the plan's shards. With
``verbose`` everything is also passed through unchanged.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*m")
START = re.compile(r"Executing task '([^']+)'")
FINISH = re.compile(r"Task '([^']+)' finished with status (\w+)")
CACHE_HIT = re.compile(r"Task (\S+) cache hit")
ERROR_LINE = re.compile(r"(Error|Exception|error:|Traceback)")
SHARD_SUFFIX = "-shard"


@dataclass
class StepState:
    """One step (a component name; per-shard steps aggregate their iterations)."""

    name: str
    started: float
    running: int = 0
    done: int = 0
    cached: int = 0
    failed: list[Path] = field(default_factory=list)
    finished: float | None = None
    bar: Any = None


class TaskOutputRouter(io.TextIOBase):
    """A thread-aware ``sys.stdout`` replacement that files each task's output under ``logs_dir``."""

    def __init__(
        self,
        logs_dir: Path,
        terminal: TextIO,
        verbose: bool = False,
        shard_total: Callable[[], int | None] = lambda: None,
        interrupted: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__()
        self.logs_dir = logs_dir
        self.terminal = terminal
        self.verbose = verbose
        self.shard_total = shard_total
        # Once the run is being stopped, the tasks it kills are not news: the runner prints one line.
        self.interrupted = interrupted
        self.started = time.monotonic()
        self.steps: dict[str, StepState] = {}
        self._lock = threading.RLock()
        self._buffers: dict[int, str] = {}
        self._current: dict[int, tuple[str, Path]] = {}
        self._counts: dict[str, int] = {}
        self._files: dict[Path, TextIO] = {}
        self._tty = bool(getattr(terminal, "isatty", lambda: False)())
        logs_dir.mkdir(parents=True, exist_ok=True)

    # -- file-like API -------------------------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:  # type: ignore[override]
        tid = threading.get_ident()
        with self._lock:
            if self.verbose:
                self.terminal.write(s)
            buf = self._buffers.get(tid, "") + s
            *lines, rest = buf.split("\n")
            self._buffers[tid] = rest
            for line in lines:
                self._line(tid, line)
        return len(s)

    def flush(self) -> None:
        with self._lock:
            for fh in self._files.values():
                fh.flush()
            self.terminal.flush()

    def close_files(self) -> None:
        with self._lock:
            for tid, rest in list(self._buffers.items()):
                if rest:
                    self._line(tid, rest)
            self._buffers.clear()
            for state in self.steps.values():
                if state.bar is not None:
                    state.bar.close()
                    state.bar = None
            for fh in self._files.values():
                fh.close()
            self._files.clear()

    # -- routing -------------------------------------------------------------------------------------
    def _file(self, path: Path) -> TextIO:
        fh = self._files.get(path)
        if fh is None:
            fh = self._files[path] = open(path, "a")  # noqa: SIM115 - closed in close_files
        return fh

    def _line(self, tid: int, line: str) -> None:
        plain = ANSI.sub("", line)
        if m := START.search(plain):
            name = m.group(1)
            n = self._counts.get(name, 0)
            self._counts[name] = n + 1
            path = self.logs_dir / (f"{name}-{n}.log" if name.endswith(SHARD_SUFFIX) else f"{name}.log")
            self._current[tid] = (name, path)
            self._on_start(name)
        current = self._current.get(tid)
        path = current[1] if current else self.logs_dir / "pipeline.log"
        self._file(path).write(plain + "\n")
        if current and (m := FINISH.search(plain)) and m.group(1) == current[0]:
            self._on_finish(current[0], m.group(2), path)
        elif m := CACHE_HIT.search(plain):
            self._on_cached(m.group(1))

    # -- progress ------------------------------------------------------------------------------------
    def _echo(self, text: str) -> None:
        if self.verbose:
            return
        self.terminal.write(text + "\n")
        self.terminal.flush()

    def _step(self, name: str) -> StepState:
        state = self.steps.get(name)
        if state is None:
            state = self.steps[name] = StepState(name, time.monotonic())
        return state

    def _on_start(self, name: str) -> None:
        state = self._step(name)
        state.running += 1

    def _on_cached(self, name: str) -> None:
        state = self._step(name)
        state.cached += 1
        state.done += 1
        self._progress(state)

    def _on_finish(self, name: str, status: str, log: Path) -> None:
        state = self._step(name)
        state.running -= 1
        if status == "SUCCESS":
            state.done += 1
        else:
            self._file(log).flush()  # the terminal shows its last line
            state.failed.append(log)
        self._progress(state)

    def _progress(self, state: StepState) -> None:
        elapsed = time.monotonic() - state.started
        sharded = state.name.endswith(SHARD_SUFFIX)
        total = self.shard_total() if sharded else 1
        if state.failed:
            if self.interrupted():
                return
            last = _last_line(state.failed[-1])
            self._echo(f"  x {state.name:<30} FAILED after {elapsed:6.1f} s  (log: {state.failed[-1]})")
            if last:
                self._echo(f"      {last}")
            return
        complete = total is not None and state.done >= total
        cached = " (cached)" if state.cached and state.cached == state.done else ""
        if not sharded:
            if complete:
                self._echo(f"  ✓ {state.name:<30} {elapsed:6.1f} s{cached}")
            return
        shown_total = total or state.done
        if self._tty and not self.verbose:
            if state.bar is None:
                from tqdm import tqdm

                state.bar = tqdm(
                    total=shown_total,
                    desc=f"  {state.name:<30}",  # the longest task name: select-train-evaluate-register
                    unit="task",  # a task runs one shard, or a group of them (local runner)
                    file=self.terminal,
                    leave=True,
                )
            state.bar.update(state.done - state.bar.n)
            if complete:
                state.bar.close()
                state.bar = None
            return
        width = 10
        filled = int(width * state.done / max(shown_total, 1))
        bar = "#" * filled + "-" * (width - filled)
        mark = "✓" if complete else " "
        self._echo(
            f"  {mark} {state.name:<30} {elapsed:6.1f} s  [{bar}] {state.done}/{shown_total} tasks{cached}"
        )


def _last_line(path: Path) -> str:
    """The last error line of a failed task's log (an exception or ``error:`` line), for the terminal."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    for line in reversed(lines):
        if ERROR_LINE.search(line) and "finished with status" not in line:
            return line[:300]
    return ""


class RootLogToRouter(logging.Handler):
    """Send kfp.local's INFO records logged outside its own logger context (e.g. cache hits) to the router."""

    def __init__(self, router: TaskOutputRouter) -> None:
        super().__init__(level=logging.INFO)
        self.router = router

    def emit(self, record: logging.LogRecord) -> None:
        self.router.write(self.format(record) + "\n")
