"""A KFP task process ends without CPython's last full collection (clinrisk.task_exit)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import clinrisk.steps
import clinrisk.usecases.segmentation.steps

PROBE = """
import atexit, gc
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))  # runs last
from clinrisk.task_exit import skip_final_collection
before = atexit._ncallbacks()
skip_final_collection()
skip_final_collection()
print("hooks added:", atexit._ncallbacks() - before, flush=True)
print("frozen now:", gc.get_freeze_count() > 0, flush=True)
"""


def test_objects_are_frozen_only_at_exit_and_the_hook_is_registered_once() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hooks added: 1", "frozen now: False", "frozen at exit: True"]


@pytest.mark.parametrize("module", [clinrisk.steps, clinrisk.usecases.segmentation.steps])
def test_every_kfp_step_function_skips_the_final_collection(module: object) -> None:
    """Each ``*_step`` is what a component body calls: each must be a task step (a new one too)."""
    steps = [
        (name, fn)
        for name, fn in inspect.getmembers(module, inspect.isfunction)
        if name.endswith("_step") and getattr(fn, "__module__", "") == module.__name__  # type: ignore[attr-defined]
    ]
    assert len(steps) >= 4
    plain = [name for name, fn in steps if not hasattr(fn, "__wrapped__")]
    assert plain == []


def test_a_step_run_in_a_process_leaves_it_frozen_at_exit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = f"""
import atexit, gc
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))
from pathlib import Path
from clinrisk.steps import resolve_config_step
resolve_config_step("", [], Path({str(tmp_path / "cfg")!r}), config_name="tiny")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "frozen at exit: True"
    assert (tmp_path / "cfg" / "config.yaml").is_file()
