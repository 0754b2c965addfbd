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


# ------------------------------------------------------------------------------------ guarded readers

SQLITE_MAGIC = b"SQLite format 3\x00"


def _brief(exc: BaseException) -> str:
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def check_sqlite_file(path: Path) -> None:
    """A local tracking store is an SQLite file (or empty, which SQLite treats as a new database); anything
    else is named as corrupt here, before SQLAlchemy raises a traceback that does not say which file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise DataError(f"{path}: MLflow store unreadable ({exc.strerror or _brief(exc)})") from None
    if head and head != SQLITE_MAGIC:
        raise DataError(f"{path}: not an SQLite database (corrupt MLflow store)")


def _family(dtype: Any) -> str:
    """Coarse dtype family: a column may be narrowed or widened within one, never moved across."""
    import polars as pl

    if isinstance(dtype, str):
        text = dtype.split("(", 1)[0].strip().lower()
        if text in ("enum", "categorical", "string", "str", "utf8"):
            return "text"
        if text.startswith(("int", "uint", "float", "decimal")):
            return "number"
        if text in ("boolean", "bool"):
            return "boolean"
        return text
    if dtype.is_numeric():
        return "number"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum | pl.Categorical):
        return "text"
    if dtype == pl.Boolean:
        return "boolean"
    return str(dtype).split("(", 1)[0].lower()


def parquet_schema(path: Path) -> dict[str, Any]:
    """Column -> polars dtype from a Parquet file's footer. A missing, truncated or non-Parquet file is a
    DataError naming it (the readers' own errors mostly do not say which file they were reading)."""
    import polars as pl

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: Parquet file not found")
    try:
        return dict(pl.read_parquet_schema(path))
    except Exception as exc:  # polars/pyarrow raise several types for truncated or foreign files
        raise DataError(
            f"{path}: not a readable Parquet file: truncated or not Parquet ({_brief(exc)})"
        ) from None


def check_parquet_files(files: list[Path], dtypes: dict[str, Any] | None = None) -> list[Path]:
    """Every file is whole Parquet and each column named in ``dtypes`` (present in the file) has a dtype of
    the expected family (number, text, boolean, ...); otherwise a DataError naming the file and column.
    Missing columns are left to the caller, which knows which ones it needs. Returns ``files``."""
    for f in files:
        schema = parquet_schema(f)
        for col, want in (dtypes or {}).items():
            got = schema.get(col)
            if got is not None and _family(got) != _family(want):
                raise DataError(f"{f}: column {col!r} is {got}, expected {want}")
    return files


def read_parquet(path: Path, columns: list[str] | None = None) -> Any:
    """``pl.read_parquet`` that names the file when it is missing, truncated or not Parquet."""
    import polars as pl

    parquet_schema(path)
    try:
        return pl.read_parquet(path, columns=columns)
    except Exception as exc:
        raise DataError(f"{path}: unreadable Parquet file ({_brief(exc)})") from None


def feature_dataset_dtypes(features_dir: Path) -> dict[str, Any]:
    """The dtypes a features dataset's shards must have: its feature_spec.json's ``dtypes`` plus the label
    and split columns (an absent or unreadable spec checks only those)."""
    dtypes: dict[str, Any] = {"label": "Float32", "sample_weight": "Float32", "split": "String"}
    spec = Path(features_dir) / "feature_spec.json"
    if spec.is_file():
        doc = read_json(spec)
        if isinstance(doc, dict) and isinstance(doc.get("dtypes"), dict):
            dtypes.update({str(k): str(v) for k, v in doc["dtypes"].items()})
    return dtypes


def check_feature_shards(features_dir: Path) -> list[Path]:
    """The shard files of a features dataset, each checked whole and typed as its feature spec says."""
    return check_parquet_files(list_shards(Path(features_dir)), feature_dataset_dtypes(features_dir))


def check_no_duplicate_keys(path: Path, keys: list[str]) -> None:
    """No two rows of one Parquet file share ``keys`` (e.g. ``patient_id, year``): duplicates would become
    duplicate feature rows and double-count a patient-year. A DataError names the file, a key and the count."""
    df = read_parquet(Path(path), columns=keys)
    dup = df.filter(df.is_duplicated())
    if dup.height:
        first = dict(zip(keys, dup.row(0), strict=True))
        raise DataError(
            f"{path}: {dup.height} rows share their ({', '.join(keys)}) with another row, e.g. {first} "
            "(duplicates must be quarantined by `clinrisk validate` before features)"
        )


def check_output_dir(path: Path) -> Path:
    """Fail early, naming the folder, when ``path`` (a stage's output dir, created later) cannot be written:
    an ancestor that is a file, a read-only or pseudo file system (/proc), no permission. Creates the parent
    folders the stage would create anyway and leaves nothing else behind. Returns ``path``."""
    path = Path(path)
    for node in (path, *path.parents):
        if node.exists():
            if not node.is_dir():
                raise DataError(f"output dir {path}: {node} is a file, not a directory")
            break
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{path.name}.write-check-{uuid.uuid4().hex[:8]}"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        where = exc.filename if exc.filename is not None else parent
        raise DataError(f"output dir {path}: cannot write {where} ({exc.strerror or exc})") from None
    return path
