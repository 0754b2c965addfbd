"""Content-addressed reuse of generated + validated data between pipeline runs (experiment suites).

Arms of a suite that differ only after validation (features, labels, training) would regenerate the same
data. With ``experiments.data_cache_dir`` set, the first run whose data key is new publishes an entry that
points at its own ``merge-data`` outputs (no copy); a later run with the same key skips planning,
generation and validation and links those directories into its outputs.

The key is a sha256 over everything that determines the generated and validated bytes: the ``generate``
and ``validate`` sections, ``run.seed``, and the generator, validation-report and package versions.
``run.workers`` and paths do not change the data and are not in the key. An entry whose directories are
gone is ignored (the run regenerates and republishes).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clinrisk.config import ClinriskConfig
from clinrisk.errors import DataError
from clinrisk.io import read_json, write_json

ENTRY_FILE = "entry.json"
REUSED_MARKER = "reused.json"


def data_key_material(cfg: ClinriskConfig) -> dict[str, Any]:
    """What determines the generated + validated data (hashed into the key; recorded in the entry)."""
    from clinrisk import __version__
    from clinrisk.generator.dataset import GENERATOR_VERSION
    from clinrisk.validate import REPORT_VERSION

    d = cfg.to_dict()
    return {
        "generate": d["generate"],
        "validate": d["validate"],
        "seed": cfg.run.seed,
        "generator_version": GENERATOR_VERSION,
        "report_version": REPORT_VERSION,
        "clinrisk_version": __version__,
    }


def data_key(cfg: ClinriskConfig) -> str:
    """sha256 hex of :func:`data_key_material`."""
    blob = json.dumps(data_key_material(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def entry_dir(cfg: ClinriskConfig) -> Path | None:
    """Cache entry directory for this config's data (None when the cache is off)."""
    root = cfg.experiments.data_cache_dir
    return None if root is None else Path(root).resolve() / data_key(cfg)


def lookup(cfg: ClinriskConfig) -> dict[str, Any] | None:
    """The usable entry for this config's data, or None (cache off, no entry, or its data is gone)."""
    where = entry_dir(cfg)
    if where is None or not (where / ENTRY_FILE).is_file():
        return None
    entry = dict(read_json(where / ENTRY_FILE))
    if entry.get("key") != data_key(cfg):
        raise DataError(f"{where / ENTRY_FILE}: key {entry.get('key')} does not match its directory")
    raw, validated = Path(entry["raw_dir"]), Path(entry["validated_dir"])
    if not (raw / "manifest.json").is_file() or not (validated / "validation" / "report.json").is_file():
        return None
    return entry


def publish(
    cfg: ClinriskConfig, plan: dict[str, Any], raw_dir: Path, validated_dir: Path, report: dict[str, Any]
) -> Path | None:
    """Record ``raw_dir``/``validated_dir`` (this run's outputs) as the entry for its data key.

    The first publisher wins: an existing usable entry is left alone. The entry file is written to a
    temporary name and renamed, so a reader never sees half an entry.
    """
    where = entry_dir(cfg)
    if where is None or lookup(cfg) is not None:
        return None
    where.mkdir(parents=True, exist_ok=True)
    manifest = read_json(Path(raw_dir) / "manifest.json")
    entry = {
        "key": data_key(cfg),
        "material": data_key_material(cfg),
        "source_run": cfg.run.name,
        "raw_dir": str(Path(raw_dir).resolve()),
        "validated_dir": str(Path(validated_dir).resolve()),
        "plan": {k: v for k, v in plan.items() if k != "data_cache"},
        "observed_hash": manifest.get("observed_hash"),
        "truth_hash": manifest.get("truth_hash"),
        "validated_content_hash": report.get("validated_content_hash"),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = where / f".{ENTRY_FILE}.tmp-{uuid.uuid4().hex[:8]}"
    write_json(tmp, entry)
    os.replace(tmp, where / ENTRY_FILE)
    return where / ENTRY_FILE


def reuse_info(entry: dict[str, Any]) -> dict[str, Any]:
    """The ``data_cache`` block a reusing run carries in its plan (and logs)."""
    return {
        "key": entry["key"],
        "reused_from": entry["source_run"],
        "raw_dir": entry["raw_dir"],
        "validated_dir": entry["validated_dir"],
    }


def link_dir(target: Path, link: Path) -> None:
    """Make ``link`` a symlink to the directory ``target`` (an empty pre-created ``link`` is replaced)."""
    link = Path(link)
    if link.is_symlink():
        link.unlink()
    elif link.is_dir():
        if any(link.iterdir()):
            raise DataError(f"{link}: output directory not empty, cannot link reused data there")
        link.rmdir()
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(Path(target).resolve(), link, target_is_directory=True)


def reused(plan: dict[str, Any]) -> dict[str, Any] | None:
    """The plan's reuse block when this run reuses cached data, else None."""
    dc = plan.get("data_cache") or {}
    return dc if dc.get("reused_from") else None
