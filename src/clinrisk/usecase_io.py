"""The framework's file layout for any use case's tables (the plugins themselves never see a path).

```
raw/<table>/shard=NNN/part.parquet        every observed table of the use case (clinical: observed/)
raw/truth/shard=NNN/part.parquet          the generator's truth (absent for ingested real data)
validated/<table>/shard=NNN/part.parquet  rows that passed; a use case with ONE table keeps the flat
quarantine/<table>/shard=NNN/...          validated/shard=NNN layout of docs/contracts.md
```
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from clinrisk.errors import DataError
from clinrisk.io import list_shards, sha256_file, shard_file
from clinrisk.usecases.base import (
    TRUTH_TABLE,
    RawShard,
    UseCase,
    ValidatedShard,
    whole_number_entity_key,
)


def write_table(df: pl.DataFrame, path: Path) -> str:
    """Write one shard file atomically (temp file + rename); returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.write_parquet(tmp, compression="zstd", statistics=True, row_group_size=256_000)
    os.replace(tmp, path)
    return sha256_file(path)


def _read(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: shard file missing")
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several error types for truncated / corrupt files
        raise DataError(f"{path}: unreadable Parquet shard ({type(exc).__name__}: {exc})") from None


def write_raw_shard(raw: RawShard, usecase: UseCase, root: Path, shard: int) -> dict[str, Any]:
    """Write a generated shard under ``root`` (raw layout); returns row counts per table."""
    missing = sorted(set(usecase.source.tables) - set(raw.tables))
    if missing:
        raise DataError(f"use case {usecase.name!r}: generated shard {shard} lacks tables {missing}")
    rows = {}
    for table in usecase.source.tables:
        write_table(raw.tables[table], shard_file(Path(root) / table, shard))
        rows[table] = raw.tables[table].height
    if raw.truth is not None:
        write_table(raw.truth, shard_file(Path(root) / TRUTH_TABLE, shard))
    return {"shard": shard, "rows": sum(rows.values()), "rows_per_table": rows}


def raw_files_sha256(root: Path) -> dict[str, str]:
    """sha256 of every shard file under a raw dir, keyed by its path relative to it (``observed/shard=000/
    part.parquet``): stored in manifest.json beside ``observed_hash`` so that validation can check, file by
    file, that the data is still what the manifest describes."""
    root = Path(root)
    return {
        f.relative_to(root).as_posix(): sha256_file(f)
        for f in sorted(root.glob("*/shard=*/part.parquet"))
        if f.is_file()
    }


def read_raw_shard(usecase: UseCase, root: Path, shard: int, *, truth: bool = True) -> RawShard:
    """A raw shard back from ``root`` (truth when present and asked for)."""
    tables = {t: _read(shard_file(Path(root) / t, shard)) for t in usecase.source.tables}
    truth_file = shard_file(Path(root) / TRUTH_TABLE, shard)
    return RawShard(tables, _read(truth_file) if truth and truth_file.is_file() else None)


def validated_dir(usecase: UseCase, root: Path, table: str) -> Path:
    """Where the validated (or quarantined) shards of ``table`` live under ``root``."""
    return Path(root) if len(usecase.source.tables) == 1 else Path(root) / table


def write_validated_shard(
    result: ValidatedShard,
    usecase: UseCase,
    validated_root: Path,
    quarantine_root: Path,
    shard: int,
    *,
    per_table: bool = False,
) -> dict[str, Any]:
    """Write passing and quarantined rows (``per_table``: always ``<root>/<table>/``, the per-shard task's
    layout); returns the shard's stats in the validation report's shape."""

    def where(root: Path, table: str) -> Path:
        return Path(root) / table if per_table else validated_dir(usecase, root, table)

    sha = hashlib.sha256()
    failures: dict[tuple[str, str], int] = {}
    for table in usecase.source.tables:
        if table not in result.tables or table not in result.quarantine:
            raise DataError(f"use case {usecase.name!r}: validation of shard {shard} lacks table {table!r}")
        digest = write_table(result.tables[table], shard_file(where(validated_root, table), shard))
        sha.update(f"{table}:{digest}\n".encode())
        q = result.quarantine[table]
        write_table(q, shard_file(where(quarantine_root, table), shard))
        if "failures" not in result.stats and q.height and {"_check", "_column"} <= set(q.columns):
            # one quarantined row may fail several checks ("a; b"): count each check once per row
            per = q.select(
                pl.col("_check").str.split("; ").alias("_check"),
                pl.col("_column").str.split("; ").alias("_column"),
            ).explode("_check", "_column")
            for check, column, n in per.group_by("_check", "_column").len().iter_rows():
                failures[(check, column)] = failures.get((check, column), 0) + int(n)
    stats = dict(result.stats)
    rows_valid = sum(t.height for t in result.tables.values())
    rows_quarantined = sum(t.height for t in result.quarantine.values())
    stats.setdefault(
        "failures", [{"_check": c, "_column": col, "rows": n} for (c, col), n in sorted(failures.items())]
    )
    stats.setdefault("input_sorted", True)
    stats.setdefault("extra_columns_dropped", [])
    stats.setdefault("recast_columns", [])
    stats.update(
        shard=shard,
        rows_valid=rows_valid,
        rows_quarantined=rows_quarantined,
        validated_sha256=sha.hexdigest() if len(usecase.source.tables) > 1 else digest,
    )
    if stats.get("rows_in") != rows_valid + rows_quarantined:
        raise DataError(
            f"use case {usecase.name!r}: shard {shard} validation lost rows "
            f"(rows_in {stats.get('rows_in')} != {rows_valid} valid + {rows_quarantined} quarantined)"
        )
    return stats


def scan_validated(
    usecase: UseCase, validated_root: Path, shard: int | None = None
) -> dict[str, pl.LazyFrame]:
    """Lazy frames of every validated table: one shard, or all shards (for fitting the feature spec)."""
    out: dict[str, pl.LazyFrame] = {}
    for table in usecase.source.tables:
        root = validated_dir(usecase, validated_root, table)
        if shard is None:
            out[table] = pl.scan_parquet([str(f) for f in list_shards(root)])
        else:
            f = shard_file(root, shard)
            if not f.is_file():
                raise DataError(f"{f}: validated shard not found")
            out[table] = pl.scan_parquet(f)
    return out


def shard_summary(table: pl.DataFrame, shard: int | None, with_truth: bool) -> dict[str, Any]:
    """Rows, entities and per-split label counts of one features shard (the shared part of summary.json)."""
    per_split = (
        table.group_by("split")
        .agg(
            pl.len().alias("rows"),
            pl.col("label_rec").cast(pl.Int64).sum().alias("label_rec_pos"),
            pl.col("label").cast(pl.Float64).sum().alias("label_sum"),
            (pl.col("sample_weight") > 0).sum().alias("weighted_rows"),
            *([pl.col("eval_label_true").cast(pl.Int64).sum().alias("label_true_pos")] if with_truth else []),
        )
        .sort("split")
    )
    return {
        "shard": shard,
        "rows": table.height,
        "patients": table["patient_id"].n_unique(),
        "per_split": {r["split"]: {k: v for k, v in r.items() if k != "split"} for r in per_split.to_dicts()},
    }


def _generate_job(cfg_json: str, plan: dict[str, Any], shard: int, out_dir: str) -> dict[str, Any]:
    # worker entry point: the config travels as JSON so spawn-started workers rebuild it exactly
    from clinrisk.config import ClinriskConfig
    from clinrisk.usecases import get

    cfg = ClinriskConfig.model_validate(json.loads(cfg_json))
    usecase = get(cfg.run.usecase)
    return write_raw_shard(usecase.source.generate_shard(cfg, plan, shard), usecase, Path(out_dir), shard)


def generate_raw(
    cfg: Any, out_dir: Path, workers: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """The generate stage for any use case (the CLI's; the KFP steps run the same per-shard pieces): plan,
    every shard of the plan (a process pool when workers > 1), the manifest and the config — atomically."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from tqdm import tqdm

    from clinrisk.io import atomic_output_dir
    from clinrisk.usecases import get

    usecase = get(cfg.run.usecase)
    workers = cfg.run.workers if workers is None else workers
    if workers < 1:
        raise DataError(f"workers: must be ≥ 1, got {workers}")
    with atomic_output_dir(Path(out_dir)) as tmp:
        plan = usecase.source.plan(cfg)
        n_shards = int(plan["n_shards"])
        bar = tqdm(total=n_shards, desc="generate", unit="shard", disable=not progress)
        cfg_json = json.dumps(cfg.to_dict())
        try:
            if workers == 1 or n_shards == 1:
                for s in range(n_shards):
                    _generate_job(cfg_json, plan, s, str(tmp))
                    bar.update(1)
            else:
                ctx = get_context("spawn")  # polars is not fork-safe
                with ProcessPoolExecutor(max_workers=min(workers, n_shards), mp_context=ctx) as pool:
                    futures = [
                        pool.submit(_generate_job, cfg_json, plan, s, str(tmp)) for s in range(n_shards)
                    ]
                    for fut in as_completed(futures):
                        fut.result()
                        bar.update(1)
        finally:
            bar.close()
        manifest = finish_raw(cfg, usecase, plan, tmp)
    manifest["path"] = str(Path(out_dir))
    return manifest


def finish_raw(cfg: Any, usecase: UseCase, plan: dict[str, Any], root: Path) -> dict[str, Any]:
    """Complete a generated raw dataset whose shards are all under ``root`` (not yet published): the
    manifest (the use case's, plus every shard file's sha256, what validation checks) and the config.
    The one finishing step of ``clinrisk generate`` and of the DAG's merge-data; 0 rows is a DataError."""
    from clinrisk.config import save_config
    from clinrisk.io import write_json

    manifest = usecase.source.manifest(cfg, plan, lambda s: read_raw_shard(usecase, root, s))
    if int(manifest.get("rows", 1)) == 0:
        raise DataError("generate: the configuration produced 0 rows; nothing published (check generate.*)")
    manifest["files_sha256"] = raw_files_sha256(root)
    save_config(cfg, root / "config.yaml")
    write_json(root / "manifest.json", manifest)
    return manifest


def ingest_raw(cfg: Any, source: Path, out_dir: Path, n_shards: int = 1) -> dict[str, Any]:
    """Real files in the use case's own format -> the raw layout (no truth), sharded by a stable hash of
    the entity id so an entity never spans shards; then ``clinrisk validate`` and the rest apply as for
    generated data. Unreadable files are a DataError naming the file; bad rows are left to validation."""
    from clinrisk.config import save_config
    from clinrisk.io import atomic_output_dir, write_json
    from clinrisk.splits import splitmix64_expr
    from clinrisk.usecases import get

    if n_shards < 1:
        raise DataError(f"--shards: must be >= 1, got {n_shards}")
    usecase = get(cfg.run.usecase)
    tables = usecase.source.ingest(cfg, Path(source))
    missing = sorted(set(usecase.source.tables) - set(tables))
    if missing:
        raise DataError(f"{source}: use case {usecase.name!r} needs tables {missing}")
    rows_per_shard = [0] * n_shards
    digests = hashlib.sha256()
    with atomic_output_dir(Path(out_dir)) as tmp:
        for table in usecase.source.tables:
            col = usecase.source.entity_column(table)
            try:
                df = tables[table].collect()
            except pl.exceptions.PolarsError as exc:
                raise DataError(
                    f"{source}: table {table!r} unreadable ({type(exc).__name__}: {exc})"
                ) from None
            if col not in df.columns:
                raise DataError(f"{source}: table {table!r} has no entity column {col!r}")
            # one key per entity however each file spells the id ("24" vs "24.0"), so an entity never
            # spans shards; unparsable ids go to shard 0, where validation quarantines them with a reason
            ent = entity_key(usecase, table).fill_null(0).reinterpret(signed=False)
            bucket = (splitmix64_expr(ent) % pl.lit(n_shards, dtype=pl.UInt64)).alias("_shard")
            df = df.with_columns(bucket)
            for s in range(n_shards):
                part = df.filter(pl.col("_shard") == s).drop("_shard")
                digests.update(f"{table}/{s}:{write_table(part, shard_file(tmp / table, s))}\n".encode())
                rows_per_shard[s] += part.height
        manifest = {
            "usecase": usecase.name,
            "source": str(Path(source).resolve()),
            "n_shards": n_shards,
            "rows": sum(rows_per_shard),
            "rows_per_shard": rows_per_shard,
            "observed_hash": digests.hexdigest(),
            "ingested": True,
            "files_sha256": raw_files_sha256(tmp),
        }
        save_config(cfg, tmp / "config.yaml")
        write_json(tmp / "manifest.json", manifest)
    return {**manifest, "path": str(Path(out_dir))}


def entity_key(usecase: UseCase, table: str) -> pl.Expr:
    """The use case's normalised Int64 entity key of raw ``table`` (its optional ``entity_key`` hook, else
    :func:`whole_number_entity_key` of its entity column)."""
    hook = getattr(usecase.source, "entity_key", None)
    if hook is not None:
        return hook(table).cast(pl.Int64, strict=False)
    return whole_number_entity_key(usecase.source.entity_column(table))


def tables_of(frames: Mapping[str, pl.DataFrame]) -> dict[str, pl.LazyFrame]:
    """Eager tables as lazy ones (the FeatureDefinition takes LazyFrames)."""
    return {k: v.lazy() for k, v in frames.items()}
