"""Collecting shard folders: what every merge step does with the outputs of its per-shard tasks."""

from __future__ import annotations

import shutil
from pathlib import Path

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
