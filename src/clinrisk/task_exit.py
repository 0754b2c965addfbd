"""How a KFP task process ends: without CPython's last full garbage collection.

Every KFP task is a fresh process that runs one step and exits. At exit CPython runs a full collection
over every object alive, and MLflow, SQLAlchemy, pydantic and LightGBM's imports leave millions of them:
≈ 0.8 s per MLflow task on the 2-core machine (the task had written its outputs; kfp.local waited for
the process). Freezing them first (``gc.freeze`` from an atexit hook, which runs before that collection)
moves them out of the collector's reach; the OS takes the memory back with the process. Objects are still
released by reference counting, and atexit hooks (logging's flush, tempfile and multiprocessing clean-up)
run as before. A process that goes on after a step (a test, a notebook) is unaffected until it exits.
"""

from __future__ import annotations

import atexit
import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_hooked = False


def skip_final_collection() -> None:
    """Register, once per process, the atexit hook that freezes every object before the final collection."""
    global _hooked
    if not _hooked:
        atexit.register(gc.freeze)
        _hooked = True


def task_step(step: Callable[P, R]) -> Callable[P, R]:
    """Mark a KFP step function (what a component body calls): its process ends without the last collection."""

    @functools.wraps(step)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        skip_final_collection()
        return step(*args, **kwargs)

    return run
