"""The generate stage (and its twin, ingest): the use case's raw dataset, shard by shard.

Core: the use case's data source (``usecase.source``: ``plan`` -> the shard plan, ``generate_shard`` -> one
shard's tables and truth, ``manifest``; ``ingest`` -> real files as tables; frames in, frames out). The steps
below do the I/O around it and are what the KFP DAG runs (``plan-generation``, one ``generate-shard`` per
shard, the raw half of ``merge-data``); :func:`run` is the whole stage on one machine (the CLI), the same
pieces: the per-shard writer and :func:`clinrisk.usecase_io.finish_raw` (manifest with file hashes, config,
the 0-row refusal) are shared, so the raw dataset is byte-identical either way.

Catalog entries: ``plan`` (the plan file), ``raw_shard`` (one shard task's output folder), ``raw`` (out:
``<table>/shard=NNN``, ``truth/``, ``manifest.json``, ``config.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clinrisk.config import ClinriskConfig
from clinrisk.errors import DataError
from clinrisk.io import atomic_output_dir, read_json, write_json
from clinrisk.stages.catalog import Catalog
from clinrisk.stages.shards import copy_shards, plan_shards
from clinrisk.usecase_io import finish_raw, generate_raw, ingest_raw, write_raw_shard
from clinrisk.usecases.base import TRUTH_TABLE, UseCase


def _usecase(cfg: ClinriskConfig) -> UseCase:
    from clinrisk.usecases import get

    return get(cfg.run.usecase)


def write_plan(cfg: ClinriskConfig, io: Catalog) -> dict[str, Any]:
    """The use case's shard plan into the file ``io["plan"]``; returns it."""
    plan = _usecase(cfg).source.plan(cfg)
    publish_plan(plan, io)
    return plan


def publish_plan(plan: dict[str, Any], io: Catalog, extra: dict[str, Any] | None = None) -> None:
    """Write ``plan`` as the file ``io["plan"]`` (its folder published atomically), with the JSON files
    ``extra`` (name → content) beside it."""
    target = io.path("plan")
    with atomic_output_dir(target.parent) as tmp:
        write_json(tmp / target.name, plan)
        for name, content in (extra or {}).items():
            write_json(tmp / name, content)


def read_plan(io: Catalog) -> dict[str, Any]:
    """The plan file ``io["plan"]`` (a DataError naming it when missing or corrupt)."""
    plan = read_json(io.path("plan"))
    if not isinstance(plan, dict):
        raise DataError(f"{io.path('plan')}: expected a JSON object")
    return plan


def generate_shard(cfg: ClinriskConfig, io: Catalog, plan: dict[str, Any], shard: int) -> dict[str, Any]:
    """One shard of the plan (observed tables + truth) into ``io["raw_shard"]``; returns its row counts."""
    if shard not in plan_shards(plan):
        raise DataError(f"shard {shard}: the plan has shards 0..{plan['n_shards'] - 1}")
    usecase = _usecase(cfg)
    with atomic_output_dir(io.path("raw_shard")) as tmp:
        return write_raw_shard(usecase.source.generate_shard(cfg, plan, shard), usecase, tmp, shard)


def collect(
    cfg: ClinriskConfig, plan: dict[str, Any], part_dirs: list[str | Path], dest: Path
) -> dict[str, Any]:
    """The shard tasks' outputs ``part_dirs`` as one raw dataset in ``dest`` (a folder being published by
    the caller): every table and the truth, then :func:`~clinrisk.usecase_io.finish_raw`. Returns the
    manifest."""
    usecase = _usecase(cfg)
    for table in (*usecase.source.tables, TRUTH_TABLE):
        copy_shards(list(part_dirs), table, dest / table)
    return finish_raw(cfg, usecase, plan, dest)


def run(
    cfg: ClinriskConfig, io: Catalog, workers: int | None = None, progress: bool = False
) -> dict[str, Any]:
    """The whole stage on one machine: plan, every shard (``workers`` processes, default ``run.workers``),
    the manifest, published atomically as ``io["raw"]``; returns the manifest (with ``path``)."""
    return generate_raw(cfg, io.path("raw"), workers=workers, progress=progress)


def ingest(cfg: ClinriskConfig, io: Catalog, source: Path, n_shards: int = 1) -> dict[str, Any]:
    """Real files in the use case's format (``source``) as the raw dataset ``io["raw"]`` (no truth), sharded
    by entity; returns the manifest (with ``path``). Validation and the rest then apply as for generated
    data."""
    return ingest_raw(cfg, source, io.path("raw"), n_shards)


__all__ = [
    "collect",
    "generate_shard",
    "ingest",
    "plan_shards",
    "publish_plan",
    "read_plan",
    "run",
    "write_plan",
]
