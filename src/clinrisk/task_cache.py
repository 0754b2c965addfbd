"""``--resume``: reuse an earlier run's finished steps through kfp.local's task cache, checked by content.

kfp.local 2.17 caches a task's outputs under a key of (component, image, command, arguments), where an
artifact argument counts by its URI. Entries are written only for tasks that succeeded, and a task with
``set_caching_options(False)`` (start-tracking, register, deploy: side effects) never reads or writes one.
Chained keys make reuse safe across steps: a task that re-runs writes new URIs, so every task downstream
of it misses the cache too. Each run keeps its own cache (``runs/<id>/.kfp_cache``), so a plain re-run
reuses nothing; ``--resume <id>`` seeds the new run's cache with the earlier run's entries.

kfp.local only checks that a cached artifact still exists, not that it is unchanged. So when a run fails
or is interrupted, the content hash of every artifact its entries point at is recorded next to them
(:func:`record_hashes`), and :func:`seed` drops every entry whose artifacts changed or vanished since.
Steps that take the MLflow run id as input (train, evaluate) re-run on resume, since the resumed run has a
new MLflow run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

HASHES_FILE = "content-hashes.json"
ARTIFACT_MARKER = "__kfp_artifact__"


def artifact_uris(entry: Any) -> list[str]:
    """The artifact URIs a cache entry (kfp.local's serialised outputs) refers to."""
    found: list[str] = []
    if isinstance(entry, dict):
        if entry.get(ARTIFACT_MARKER) and isinstance(entry.get("uri"), str):
            found.append(entry["uri"])
        for value in entry.values():
            found.extend(artifact_uris(value))
    elif isinstance(entry, list):
        for value in entry:
            found.extend(artifact_uris(value))
    return found


def content_hash(path: Path) -> str | None:
    """sha256 over a file, or a directory's relative paths and file contents; None if it is gone."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path)).encode() if f != path else b".")
        h.update(b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def materialize_metrics(entry: Any) -> int:
    """Write each metrics artifact of a cache entry that has no file yet (its metadata, as JSON).

    kfp.local keeps a ``dsl.Metrics`` output only as metadata and never creates its file, while its cache
    treats an entry whose artifact file is missing as a miss. Without the file, no task with a metrics
    output (merge-data, select-features, ...) could ever be reused; a cluster's executor writes the file too.
    """
    written = 0
    if isinstance(entry, dict):
        title = str(entry.get("schema_title", ""))
        uri = entry.get("uri")
        if entry.get(ARTIFACT_MARKER) and title.endswith("Metrics") and isinstance(uri, str):
            path = Path(uri)
            if not path.exists() and path.parent.is_dir():
                path.write_text(json.dumps(entry.get("metadata") or {}, sort_keys=True))
                written += 1
        for value in entry.values():
            written += materialize_metrics(value)
    elif isinstance(entry, list):
        for value in entry:
            written += materialize_metrics(value)
    return written


def _entries(cache_dir: Path) -> dict[str, Any]:
    out = {}
    for path in sorted(cache_dir.glob("*.json")):
        if path.name == HASHES_FILE:
            continue
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")


def record_hashes(cache_dir: Path, run_dir: Path, written_before: float | None = None) -> int:
    """Hash the artifacts every cache entry of a failed/interrupted run points at; returns the count.

    Only artifacts inside the run's own folder are hashed: entries seeded from an earlier run keep the
    hashes recorded there (merged in by :func:`seed`). With ``written_before`` (the time a stop signal
    arrived), an entry written at or after it is left unhashed, so never trusted: kfp.local's DockerRunner
    reports a task whose container was killed and auto-removed as succeeded, and caches it.
    """
    if not cache_dir.is_dir():
        return 0
    hashes_path = cache_dir / HASHES_FILE
    hashes: dict[str, dict[str, str | None]] = {}
    if hashes_path.is_file():
        hashes = json.loads(hashes_path.read_text())
    run_dir = run_dir.resolve()
    for key, entry in _entries(cache_dir).items():
        if key in hashes:
            continue
        # The margin covers the file system's coarse clock (mtimes may lag time.time() by a tick).
        if written_before is not None and _mtime(cache_dir / f"{key}.json") >= written_before - 0.05:
            continue
        materialize_metrics(entry)
        uris = artifact_uris(entry)
        hashes[key] = {
            uri: content_hash(Path(uri)) for uri in uris if Path(uri).resolve().is_relative_to(run_dir)
        }
    tmp = hashes_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(hashes, indent=1, sort_keys=True))
    tmp.replace(hashes_path)
    return len(hashes)


def seed(source_cache: Path, dest_cache: Path) -> int:
    """Copy the earlier run's cache entries whose artifacts are unchanged; returns how many were kept."""
    dest_cache.mkdir(parents=True, exist_ok=True)
    if not source_cache.is_dir():
        return 0
    hashes_path = source_cache / HASHES_FILE
    hashes: dict[str, dict[str, str | None]] = (
        json.loads(hashes_path.read_text()) if hashes_path.is_file() else {}
    )
    kept: dict[str, dict[str, str | None]] = {}
    for key, entry in _entries(source_cache).items():
        recorded = hashes.get(key)
        if recorded is None or not set(recorded) <= set(artifact_uris(entry)):
            continue  # never hashed (the runner died before it could): not trusted
        if any(content_hash(Path(uri)) != digest for uri, digest in recorded.items()):
            continue  # changed or deleted since the run ended
        shutil.copy2(source_cache / f"{key}.json", dest_cache / f"{key}.json")
        kept[key] = recorded
    (dest_cache / HASHES_FILE).write_text(json.dumps(kept, indent=1, sort_keys=True))
    return len(kept)
