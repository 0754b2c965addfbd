"""The shards of a sharded stage: which ones the plan makes, and collecting their task folders."""

from __future__ import annotations

import json
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


# --------------------------------------------------------------------------- task groups (local runner)
# kfp.local starts a fresh Python process per task, so one task per shard pays the interpreter + import
# start-up once per shard and fan-out. When the plan is asked for task groups, each fan-out task runs a
# contiguous group of shards one after another and writes each shard's usual output into a subfolder;
# the merge steps expand those back into the per-shard parts, in shard order, so the merged bytes are
# those of the one-shard-per-task run.

TASK_GROUPS_FILE = "task_groups.json"  # beside plan.json: the shard list of every fan-out task
GROUP_PARTS_FILE = "group_parts.json"  # in a grouped task's output: its per-shard subfolders, in order


def group_shards(shards: list[int], n_groups: int) -> list[list[int]]:
    """``shards`` as at most ``n_groups`` contiguous groups whose sizes differ by at most one.

    ``n_groups`` 0 means one group per shard (the cluster default: maximum parallelism)."""
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 0:
        raise DataError(f"task_groups: must be an integer >= 0 (0 = one task per shard), got {n_groups!r}")
    if n_groups == 0 or n_groups >= len(shards):
        return [[s] for s in shards]
    size, extra = divmod(len(shards), n_groups)
    groups, start = [], 0
    for g in range(n_groups):
        end = start + size + (1 if g < extra else 0)
        groups.append(list(shards[start:end]))
        start = end
    return groups


def group_part_name(shard: int) -> str:
    """A grouped task's subfolder for ``shard`` (not ``shard=NNN``: the part's own shard dirs use that)."""
    return f"part-{shard:03d}"


def expand_parts(part_dirs: list[str | Path]) -> list[Path]:
    """The per-shard parts behind the fan-out tasks' outputs: a grouped task's output stands for its
    subfolders (in the order it lists them), any other output for itself."""
    parts: list[Path] = []
    for part in part_dirs:
        listing = Path(part) / GROUP_PARTS_FILE
        if listing.is_file():
            names = json.loads(listing.read_text())["parts"]
            parts.extend(Path(part) / str(n) for n in names)
        else:
            parts.append(Path(part))
    return parts
