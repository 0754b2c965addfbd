"""The shards of a sharded stage: which ones the plan makes, and collecting their task folders."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from clinrisk.errors import DataError
from clinrisk.io import SHARD_DIR_RE


def copy_shards(part_dirs: list[str | Path], subdir: str, dest: Path) -> int:
    """Copy every ``shard=NNN`` directory found under ``<part>/<subdir>`` into ``dest``; returns the count.

    Two parts holding the same shard is an error (a shard must be produced exactly once).
    """
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for part in part_dirs:
        src_root = Path(part) / subdir if subdir else Path(part)
        if not src_root.is_dir():
            raise DataError(f"{src_root}: expected shard directory not found")
        for child in sorted(src_root.iterdir()):
            if not SHARD_DIR_RE.match(child.name):
                continue
            target = dest / child.name
            if target.exists():
                raise DataError(f"{child.name}: produced by more than one task ({part})")
            shutil.copytree(child, target)
            n += 1
    return n


def plan_shards(plan: dict[str, Any]) -> list[int]:
    """The shard indices every per-shard task fans out over: the plan's, never the config's (the plan may
    make fewer shards than ``generate.n_shards``, e.g. when there are fewer patient blocks)."""
    n = plan.get("n_shards")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DataError(f"plan.json: n_shards must be an integer >= 1, got {n!r}")
    return list(range(n))
