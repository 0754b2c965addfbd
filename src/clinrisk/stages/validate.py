"""The validate stage: the use case's raw schema on every shard; passing rows published, failing rows
quarantined with reasons, a report; the dataset gates (shards and rows as the raw manifest says, no entity
in two shards, quarantined share within ``validate.max_quarantine_fraction``) or nothing is published.

Core: the use case's schema (``usecase.schema.validate``: one raw shard's frames in, the validated and
quarantined frames out). The steps below do the I/O around it and are what the KFP DAG runs (one
``validate-shard`` per shard, the validated half of ``merge-data``); :func:`run` is the whole stage on one
machine (the CLI). Both use :func:`clinrisk.validate.validate_raw_shard` per shard and
:func:`clinrisk.validate.finish_report` for the gates and the report, so the validated shards, the
quarantine and the report's counts and hashes are the same either way.

Catalog entries: ``raw`` (in: a raw dataset, or one shard task's output), ``validated_shard`` (one shard
task's output folder), ``validated``, ``quarantine``, ``validation`` (out: the report folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clinrisk.config import ClinriskConfig
from clinrisk.io import atomic_output_dir, read_json, write_json
from clinrisk.stages.catalog import Catalog
from clinrisk.stages.shards import copy_shards
from clinrisk.usecase_io import validated_dir
from clinrisk.validate import (
    finish_report,
    shard_ids,
    validate_raw_shard,
    validate_to,
    write_report,
)

STATS_FILE = "stats.json"


def validate_shard(cfg: ClinriskConfig, io: Catalog, shard: int) -> dict[str, Any]:
    """One shard of ``io["raw"]`` into ``io["validated_shard"]`` (``validated/<table>/``,
    ``quarantine/<table>/``, ``stats.json``); returns its stats."""
    with atomic_output_dir(io.path("validated_shard")) as tmp:
        stats = validate_raw_shard(
            cfg, io.path("raw"), shard, tmp / "validated", tmp / "quarantine", per_table=True
        )
        write_json(tmp / STATS_FILE, stats)
    return stats


def collect(
    cfg: ClinriskConfig,
    manifest: dict[str, Any],
    part_dirs: list[str | Path],
    validated: Path,
    quarantine: Path,
    report_dir: Path,
) -> dict[str, Any]:
    """The shard tasks' outputs ``part_dirs`` as one validated dataset, its quarantine and its report (in
    folders the caller publishes), after the dataset gates of :func:`~clinrisk.validate.finish_report`;
    ``manifest`` is the raw dataset's (:func:`~clinrisk.validate.checked_raw_manifest`). Returns the
    report."""
    from clinrisk.usecases import get

    usecase = get(cfg.run.usecase)
    for table in usecase.source.tables:
        copy_shards(list(part_dirs), f"validated/{table}", validated_dir(usecase, validated, table))
        copy_shards(list(part_dirs), f"quarantine/{table}", validated_dir(usecase, quarantine, table))
    stats = [read_json(Path(p) / STATS_FILE) for p in part_dirs]
    entities = {int(s["shard"]): shard_ids(cfg, validated, int(s["shard"])) for s in stats}
    where = Path(manifest["path"]).parent / usecase.source.tables[0]
    report = finish_report(cfg, manifest, where, stats, entities)
    write_report(report, report_dir)
    return report


def run(cfg: ClinriskConfig, io: Catalog, workers: int | None = None) -> dict[str, Any]:
    """The whole stage on one machine: every shard of ``io["raw"]`` (``workers`` processes, default
    ``run.workers``) into ``io["validated"]``, ``io["quarantine"]`` and the report ``io["validation"]``,
    published together or not at all; returns the report."""
    return validate_to(
        cfg,
        io.path("raw"),
        io.path("validated"),
        io.path("quarantine"),
        io.path("validation"),
        workers,
    )
