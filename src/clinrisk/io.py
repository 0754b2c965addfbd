"""Small I/O helpers shared by every stage: atomic publication, shard discovery, JSON, hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from clinrisk.errors import DataError

SHARD_DIR_RE = re.compile(r"^shard=(\d{3,})$")
SHARD_FILE = "part.parquet"


def shard_dir_name(shard: int) -> str:
    """``shard=007`` style directory name for a shard index."""
    return f"shard={shard:03d}"


def shard_file(root: Path, shard: int) -> Path:
    """Path of the single Parquet file of ``shard`` under ``root``."""
    return Path(root) / shard_dir_name(shard) / SHARD_FILE


def list_shards(root: Path) -> list[Path]:
    """All shard files under ``root`` in shard order; a shard dir without its file is an error."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory not found")
    found: list[tuple[int, Path]] = []
    for child in root.iterdir():
        m = SHARD_DIR_RE.match(child.name)
        if not m:
            continue
        f = child / SHARD_FILE
        if not f.is_file():
            raise DataError(f"{f}: shard file missing")
        found.append((int(m.group(1)), f))
    if not found:
        raise DataError(f"{root}: no shard=NNN/{SHARD_FILE} files")
    return [p for _, p in sorted(found)]


@contextlib.contextmanager
def atomic_output_dir(final: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``final`` only if the block succeeds.

    A failed stage therefore publishes nothing (the temp dir is removed), and readers never see a
    half-written output.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{final}: already exists")
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively, so the JSON written is strict."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj: Any) -> Path:
    """Write pretty, key-sorted JSON (stable bytes for hashing and diffs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_json(path: Path) -> Any:
    """Read JSON; a missing or corrupt file is a DataError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
