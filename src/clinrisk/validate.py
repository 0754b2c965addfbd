"""Raw-data validation: split every raw shard into validated rows and quarantined rows with reasons.

Per shard (memory bounded by one shard):

1. read ``observed/shard=NNN/part.parquet`` — a missing, truncated or corrupt file is a :class:`DataError`
   naming the file;
2. cast each column to the contract dtype (``clinrisk.schemas``). A missing column, a column with no cast
   path, or one whose non-null values *all* fail to cast is a :class:`DataError` naming the file and column
   (a systematically wrong extract must be fixed, not quarantined). Individual values that cannot be cast
   (``'abc'`` in a Float32 column, ``'mg/l'`` in a unit column, ``1.5`` in an Int16 column) become null and
   their rows are quarantined with check ``dtype`` / ``isin`` and the original value in the reason;
3. run the pandera schema with ``lazy=True`` (all failures at once); each failing row goes to quarantine
   once, with the failing checks, columns and reasons joined by ``"; "``;
   a failure confined to one measurement (a lab/vital value or its unit: ``schemas.HARD_RANGES``) is
   quarantined at value level instead: that value and its unit become null in the validated row, the row
   (with its diagnoses and other values) is kept, and the value is recorded with its reason in
   ``ShardResult.values`` and the report's ``quarantined_values`` — a bad lab unit never removes a
   patient-year or moves a first recorded diagnosis;
4. passing rows are written sorted by ``(patient_id, year)`` (stable) with the contract dtypes; columns not
   in the contract are dropped from the output and listed in the report.

Counts always add up: ``rows_in = rows_valid + rows_quarantined`` per shard and in total. The stage fails
(publishing nothing) when the quarantined share (rows quarantined whole or with a quarantined value)
exceeds ``validate.max_quarantine_fraction``, when a shard
listed in the raw manifest is missing, or when the row count disagrees with the manifest.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from clinrisk.config import ClinriskConfig
from clinrisk.errors import DataError
from clinrisk.io import (
    SHARD_DIR_RE,
    atomic_output_dir,
    list_shards,
    read_json,
    sha256_file,
    shard_file,
    write_json,
)
from clinrisk.schemas import HARD_RANGES, OBSERVED_SCHEMA, Rule, raw_rules, raw_schema

__all__ = [
    "MEASUREMENT_COLUMNS",
    "QUARANTINE_COLUMNS",
    "REPORT_VERSION",
    "VALUE_QUARANTINE_COLUMNS",
    "ShardIds",
    "ShardResult",
    "build_report",
    "cast_to_schema",
    "check_report",
    "check_shards",
    "checked_raw_manifest",
    "finish_report",
    "read_raw_manifest",
    "render_report_md",
    "shard_entities",
    "shard_ids",
    "validate_dataset",
    "validate_frame",
    "validate_raw_shard",
    "validate_shard",
    "validate_shard_to_dir",
    "validate_to",
    "verify_raw_files",
    "write_report",
]

REPORT_VERSION = 1
QUARANTINE_COLUMNS = ("_row", "_check", "_column", "_reason")
SORT_KEY = ["patient_id", "year"]
VALIDATED_DIR, QUARANTINE_DIR, REPORT_DIR = "validated", "quarantine", "validation"
_FAILURE_SCHEMA = {"_row": pl.UInt32, "_check": pl.String, "_column": pl.String, "_reason": pl.String}
VALUE_QUARANTINE_COLUMNS = ("patient_id", "year", "_check", "_column", "_reason", "_value")


def _measurement_columns() -> dict[str, tuple[str, ...]]:
    """Measurement column -> the columns nulled when it fails (a value and its unit stand or fall together)."""
    out: dict[str, tuple[str, ...]] = {}
    for vr in HARD_RANGES:
        pair = (vr.value_col,) if vr.unit_col is None else (vr.value_col, vr.unit_col)
        for col in pair:
            out[col] = pair
    return out


MEASUREMENT_COLUMNS = _measurement_columns()


@dataclass
class ShardResult:
    """Outcome of validating one shard: passing rows, quarantined rows, and counts for the report."""

    valid: pl.DataFrame
    quarantine: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)
    # value-level quarantine: one row per nulled measurement of a kept row (VALUE_QUARANTINE_COLUMNS)
    values: pl.DataFrame = field(default_factory=lambda: pl.DataFrame())


def _failures(rows: pl.Series, check: str, column: str, reasons: pl.Series | str) -> pl.DataFrame:
    n = rows.len()
    reason = reasons if isinstance(reasons, pl.Series) else pl.Series([reasons] * n, dtype=pl.String)
    return pl.DataFrame(
        {
            "_row": rows.cast(pl.UInt32),
            "_check": pl.Series([check] * n, dtype=pl.String),
            "_column": pl.Series([column] * n, dtype=pl.String),
            "_reason": reason.cast(pl.String),
        },
        schema=_FAILURE_SCHEMA,
    )


def _quote(s: pl.Series) -> pl.Series:
    return ("'" + s.cast(pl.String) + "'").fill_null("null")


def _check_not_all_bad(src: pl.Series, bad: pl.Series, dtype: pl.DataType, where: str) -> None:
    """A column none of whose values can be read as its contract dtype (or level set) is a systematically wrong
    extract: a DataError naming the file and column, not one quarantine reason per row."""
    n_bad, n_nonnull = int(bad.sum()), src.len() - src.null_count()
    if n_bad and n_bad == n_nonnull:
        example = src.filter(bad).cast(pl.String, strict=False)[0]
        raise DataError(
            f"{where}: column {src.name!r}: none of its {n_nonnull} values can be cast from {src.dtype} to "
            f"{dtype} (e.g. {example!r})"
        )


def _cast_column(src: pl.Series, dtype: pl.DataType, where: str) -> tuple[pl.Series, pl.DataFrame]:
    """Cast one column to ``dtype``; returns the cast column and a failure frame for values that did not cast."""
    col = src.name
    idx = pl.Series("_row", range(src.len()), dtype=pl.UInt32)
    if isinstance(dtype, pl.Enum):
        levels = list(dtype.categories)
        try:
            as_str = src.cast(pl.String)
        except Exception as exc:
            raise DataError(f"{where}: column {col!r}: cannot read {src.dtype} as {dtype} ({exc})") from None
        bad = as_str.is_not_null() & ~as_str.is_in(levels)
        _check_not_all_bad(src, bad, dtype, where)
        out = as_str.set(bad, None).cast(dtype) if bad.any() else as_str.cast(dtype)  # type: ignore[arg-type]
        reasons = "unknown value " + _quote(as_str.filter(bad)) + f" (allowed: {', '.join(levels)})"
        return out, _failures(idx.filter(bad), "isin", col, reasons)
    try:
        out = src.cast(dtype, strict=False)
    except Exception as exc:
        raise DataError(f"{where}: column {col!r}: no cast from {src.dtype} to {dtype} ({exc})") from None
    bad = src.is_not_null() & out.is_null()
    if src.dtype.is_float() and dtype.is_integer():
        # float -> int truncates silently (1.5 -> 1): a value that does not round-trip is a cast failure.
        lossy = out.cast(pl.Float64) != src.cast(pl.Float64)
        bad = bad | lossy.fill_null(False)
        out = out.set(bad, None)  # type: ignore[arg-type]
    _check_not_all_bad(src, bad, dtype, where)
    reasons = "cannot cast " + _quote(src.filter(bad).cast(pl.String, strict=False)) + f" to {dtype}"
    return out, _failures(idx.filter(bad), "dtype", col, reasons)


def cast_to_schema(
    df: pl.DataFrame, where: str = "data"
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, str]]:
    """Cast ``df`` to the contract dtypes (contract column order, extra columns dropped).

    Returns ``(cast_frame, failures, recast)``: failures has one row per (row, column) that could not be cast
    (columns ``_row, _check, _column, _reason``); ``recast`` maps a column to the dtype it arrived with when
    that differed. A missing or wholly un-castable column raises :class:`DataError` naming ``where`` and it.
    """
    missing = [c for c in OBSERVED_SCHEMA if c not in df.columns]
    if missing:
        raise DataError(f"{where}: required column(s) missing: {', '.join(missing)}")
    cols: list[pl.Series] = []
    fails: list[pl.DataFrame] = []
    recast: dict[str, str] = {}
    for name, dtype in OBSERVED_SCHEMA.items():
        src = df.get_column(name)
        if src.dtype == dtype:
            cols.append(src)
            continue
        recast[name] = str(src.dtype)
        out, f = _cast_column(src, dtype, where)
        cols.append(out.alias(name))
        if f.height:
            fails.append(f)
    failures = pl.concat(fails) if fails else pl.DataFrame(schema=_FAILURE_SCHEMA)
    return pl.DataFrame(cols), failures, recast


def _pandera_failures(
    df: pl.DataFrame, rules: Sequence[Rule], first_year: int, last_year: int, where: str
) -> pl.DataFrame:
    """Run the pandera schema lazily and return one failure row per (row, check)."""
    import pandera.errors as pa_errors

    schema = raw_schema(first_year, last_year)
    try:
        schema.validate(df, lazy=True)
    except pa_errors.SchemaErrors as exc:
        fc = exc.failure_cases
    else:
        return pl.DataFrame(schema=_FAILURE_SCHEMA)
    if fc.get_column("index").null_count():
        # a schema-level failure (dtype, missing column) cannot happen after cast_to_schema: report it loudly.
        bad = fc.filter(pl.col("index").is_null()).head(5).to_dicts()
        raise DataError(f"{where}: schema-level validation failure: {bad}")
    label = {(r.column, r.name): r.label for r in rules}
    reason = {(r.column, r.name): r.reason for r in rules}
    keys = list(zip(fc.get_column("column").to_list(), fc.get_column("check").to_list(), strict=True))
    uniq = {
        k: (label.get(k, k[0]), reason.get(k, f"{k[0]} must not be null" if k[1] == "not_nullable" else k[1]))
        for k in set(keys)
    }
    lut = pl.DataFrame(
        {
            "column": [k[0] for k in uniq],
            "check": [k[1] for k in uniq],
            "_column": [v[0] for v in uniq.values()],
            "_reason": [v[1] for v in uniq.values()],
        },
        schema={"column": pl.String, "check": pl.String, "_column": pl.String, "_reason": pl.String},
    )
    return (
        fc.select(pl.col("index").cast(pl.UInt32).alias("_row"), "column", "check", "failure_case")
        .join(lut, on=["column", "check"], how="left")
        .select(
            "_row",
            pl.col("check").alias("_check"),
            "_column",
            (
                pl.col("_reason")
                + " (got "
                + pl.col("column")
                + "="
                + pl.col("failure_case").fill_null("null")
                + ")"
            ).alias("_reason"),
        )
    )


def validate_frame(
    raw: pl.DataFrame, first_year: int, last_year: int, where: str = "data", shard: int | None = None
) -> ShardResult:
    """Validate one in-memory raw frame (pure): cast, run every rule, split into valid and quarantine rows."""
    rules = raw_rules(first_year, last_year)
    extra = [c for c in raw.columns if c not in OBSERVED_SCHEMA]
    df, cast_fail, recast = cast_to_schema(raw, where)
    pa_fail = _pandera_failures(df, rules, first_year, last_year, where)
    if cast_fail.height and pa_fail.height:
        # a value that failed to cast is null now; its not_nullable failure would only repeat the cast reason.
        pa_fail = pa_fail.join(
            cast_fail.select("_row", pl.col("_column")), on=["_row", "_column"], how="anti"
        )
    all_checks = pl.concat([cast_fail, pa_fail])
    value_level = pl.col("_column").is_in(list(MEASUREMENT_COLUMNS))
    row_level_rows = all_checks.filter(~value_level).select("_row").unique()
    # rows that fail only on measurements are kept with those values nulled; others are quarantined whole
    value_fail = all_checks.filter(value_level).join(row_level_rows, on="_row", how="anti")
    per_check = all_checks.join(value_fail.select("_row").unique(), on="_row", how="anti")
    df, values = _null_bad_values(df, raw, value_fail)
    by_row = (
        per_check.sort("_row", maintain_order=True)
        .group_by("_row", maintain_order=True)
        .agg(
            pl.col("_check").str.join("; "),
            pl.col("_column").str.join("; "),
            (pl.col("_check") + ": " + pl.col("_reason")).str.join("; ").alias("_reason"),
        )
    )
    indexed = df.with_row_index("_row")
    valid = (
        indexed.join(by_row.select("_row"), on="_row", how="anti", maintain_order="left")
        .drop("_row")
        .sort(SORT_KEY, maintain_order=True)
    )
    quarantine = indexed.join(by_row, on="_row", how="inner", maintain_order="left")
    value_counts = (
        value_fail.group_by("_check", "_column")
        .agg(pl.len().cast(pl.Int64).alias("values"))
        .sort("_check", "_column")
    )
    counts = (
        per_check.group_by("_check", "_column")
        .agg(pl.col("_row").n_unique().alias("rows"))
        .sort("_check", "_column")
    )
    step_pid = pl.col("patient_id").diff()
    in_order = (step_pid > 0) | ((step_pid == 0) & (pl.col("year").diff() > 0))
    was_sorted = df.height < 2 or bool(df.select(in_order.slice(1).all()).item())
    stats: dict[str, Any] = {
        "shard": shard,
        "file": where,
        "rows_in": raw.height,
        "rows_valid": valid.height,
        "rows_quarantined": quarantine.height,
        "failures": counts.to_dicts(),
        "values_quarantined": values.height,
        "rows_with_quarantined_values": value_fail.select("_row").n_unique() if value_fail.height else 0,
        "value_failures": value_counts.to_dicts(),
        "quarantined_values": values.to_dicts(),
        "extra_columns_dropped": extra,
        "recast_columns": recast,
        "input_sorted": was_sorted,
    }
    if stats["rows_valid"] + stats["rows_quarantined"] != stats["rows_in"]:  # invariant, never expected
        raise DataError(f"{where}: row accounting mismatch {stats}")
    return ShardResult(valid, quarantine, stats, values)


def _null_bad_values(
    df: pl.DataFrame, raw: pl.DataFrame, value_fail: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Null each failing measurement (and its unit) of ``df``; return it and the value-quarantine records
    (id columns, check, column, reason and the value as it arrived)."""
    if not value_fail.height:
        empty = {c: pl.String for c in VALUE_QUARANTINE_COLUMNS} | {"patient_id": pl.Int64, "year": pl.Int16}
        return df, pl.DataFrame(schema=empty)
    row_idx = pl.int_range(pl.len(), dtype=pl.UInt32)
    nulled: dict[str, set[int]] = {}
    for column, rows in value_fail.group_by("_column").agg("_row").iter_rows():
        for col in MEASUREMENT_COLUMNS[column]:
            nulled.setdefault(col, set()).update(rows)
    df = df.with_columns(
        pl.when(row_idx.is_in(sorted(rows))).then(None).otherwise(pl.col(col)).alias(col)
        for col, rows in nulled.items()
    )
    original = [
        str(raw.get_column(c)[i]) if raw.get_column(c)[i] is not None else "null"
        for i, c in value_fail.select("_row", "_column").iter_rows()
    ]
    ids = df.select(pl.col("patient_id").cast(pl.Int64), pl.col("year").cast(pl.Int16)).with_row_index("_row")
    values = (
        value_fail.with_columns(pl.Series("_value", original, dtype=pl.String))
        .join(ids, on="_row", how="left", maintain_order="left")
        .sort("_row", "_column", maintain_order=True)
        .select(*VALUE_QUARANTINE_COLUMNS)
    )
    return df, values


def _read_shard(path: Path) -> pl.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: shard file missing")
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several error types for truncated / corrupt files
        raise DataError(f"{path}: unreadable Parquet shard ({type(exc).__name__}: {exc})") from None


def validate_shard(
    observed_file: Path, first_year: int, last_year: int, shard: int | None = None
) -> ShardResult:
    """Read and validate one raw shard file; a missing or corrupt file raises :class:`DataError`."""
    return validate_frame(_read_shard(observed_file), first_year, last_year, str(observed_file), shard)


def _write_parquet(df: pl.DataFrame, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path, compression="zstd", statistics=True)
    return sha256_file(path)


def validate_shard_to_dir(
    cfg: ClinriskConfig, observed_file: Path, shard: int, validated_root: Path, quarantine_root: Path
) -> dict[str, Any]:
    """Validate one shard and write ``<validated_root>/shard=NNN/part.parquet`` and the quarantine twin.

    Returns the shard's stats (with the sha256 of the validated file). Callers provide (temporary) roots:
    this is the per-shard unit of work of :func:`validate_dataset` and of the per-shard KFP step.
    """
    g = cfg.generate
    res = validate_shard(Path(observed_file), g.first_year, g.last_year, shard)
    stats = dict(res.stats)
    stats["validated_sha256"] = _write_parquet(res.valid, shard_file(Path(validated_root), shard))
    stats["quarantine_sha256"] = _write_parquet(res.quarantine, shard_file(Path(quarantine_root), shard))
    return stats


def _shard_index(path: Path) -> int:
    m = SHARD_DIR_RE.match(path.parent.name)
    if not m:
        raise DataError(f"{path}: not inside a shard=NNN directory")
    return int(m.group(1))


def read_raw_manifest(raw_dir: Path) -> dict[str, Any]:
    """``{"path", "sha256", "content"}`` of ``raw_dir/manifest.json`` (DataError if missing or corrupt)."""
    path = raw_dir / "manifest.json"
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return {"path": str(path), "sha256": sha256_file(path), "content": data}


def verify_raw_files(raw_dir: Path, manifest: dict[str, Any]) -> bool:
    """Every shard file the raw manifest hashed (``files_sha256``, recorded with its ``observed_hash``) is
    still byte-identical: data changed or swapped after generation is a DataError naming the file, not a
    report whose provenance hashes describe other data. Returns False for a manifest without file hashes
    (written before they were recorded; the report says so)."""
    content = manifest["content"]
    hashes = content.get("files_sha256")
    if not isinstance(hashes, dict):
        return False
    for rel, want in sorted(hashes.items()):
        f = Path(raw_dir) / str(rel)
        if not f.is_file():
            raise DataError(f"{f}: listed in {manifest['path']} but missing")
        if sha256_file(f) != want:
            raise DataError(
                f"{f}: changed since {manifest['path']} was written (its observed_hash "
                f"{str(content.get('observed_hash', '?'))[:16]}… no longer describes this data)"
            )
    return True


def _expected_shards(manifest: dict[str, Any]) -> list[int] | None:
    """Shard indices the raw manifest promises (``shards`` list/dict or ``n_shards``), if it says."""
    shards = manifest.get("shards")
    if isinstance(shards, list):
        out = []
        for s in shards:
            if isinstance(s, dict) and "shard" in s:
                out.append(int(s["shard"]))
            elif isinstance(s, int):
                out.append(s)
        if out:
            return sorted(out)
    if isinstance(shards, dict) and shards:
        try:
            return sorted(int(str(k).removeprefix("shard=")) for k in shards)
        except ValueError:
            return None
    n = manifest.get("n_shards")
    return list(range(int(n))) if isinstance(n, int) else None


def _expected_rows(manifest: dict[str, Any]) -> int | None:
    for key in ("n_rows", "rows", "observed_rows", "n_observed_rows"):
        v = manifest.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, dict) and isinstance(v.get("observed"), int):
            return int(v["observed"])
    return None


def _content_hash(shard_stats: Sequence[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for s in sorted(shard_stats, key=lambda s: s["shard"]):
        h.update(f"shard={s['shard']:03d}:{s['validated_sha256']}\n".encode())
    return h.hexdigest()


def build_report(
    cfg: ClinriskConfig, shard_stats: Sequence[dict[str, Any]], raw_manifest: dict[str, Any]
) -> dict[str, Any]:
    """Dataset report from per-shard stats: totals, per-check counts, hashes, provenance."""
    stats = sorted(shard_stats, key=lambda s: s["shard"])
    rows_in = sum(s["rows_in"] for s in stats)
    valid = sum(s["rows_valid"] for s in stats)
    quar = sum(s["rows_quarantined"] for s in stats)
    # the quality gate counts every row with anything quarantined: a whole row or one of its values
    touched = quar + sum(int(s.get("rows_with_quarantined_values", 0)) for s in stats)
    by_check: dict[tuple[str, str], int] = {}
    by_value_check: dict[tuple[str, str], int] = {}
    for s in stats:
        for f in s["failures"]:
            k = (f["_check"], f["_column"])
            by_check[k] = by_check.get(k, 0) + int(f["rows"])
        for f in s.get("value_failures", []):
            k = (f["_check"], f["_column"])
            by_value_check[k] = by_value_check.get(k, 0) + int(f["values"])
    content = raw_manifest.get("content", {})
    return {
        "report_version": REPORT_VERSION,
        "rows_in": rows_in,
        "rows_valid": valid,
        "rows_quarantined": quar,
        "rows_with_quarantined_values": touched - quar,
        "quarantine_fraction": touched / rows_in if rows_in else 0.0,
        "max_quarantine_fraction": cfg.validate_.max_quarantine_fraction,
        "calendar": [cfg.generate.first_year, cfg.generate.last_year],
        "n_shards": len(stats),
        "failures_by_check": [
            {"check": c, "column": col, "rows": n} for (c, col), n in sorted(by_check.items())
        ],
        # value-level quarantine: the row is kept, only these measurements were nulled
        "values_quarantined": sum(int(s.get("values_quarantined", 0)) for s in stats),
        "value_failures_by_check": [
            {"check": c, "column": col, "values": n} for (c, col), n in sorted(by_value_check.items())
        ],
        "quarantined_values": [v for s in stats for v in s.get("quarantined_values", [])],
        "shards": [
            {
                k: s[k]
                for k in (
                    "shard",
                    "file",
                    "rows_in",
                    "rows_valid",
                    "rows_quarantined",
                    "input_sorted",
                    "extra_columns_dropped",
                    "recast_columns",
                    "validated_sha256",
                )
            }
            | {
                "failures": [
                    {"check": f["_check"], "column": f["_column"], "rows": f["rows"]} for f in s["failures"]
                ]
            }
            for s in stats
        ],
        "validated_content_hash": _content_hash(stats),
        "raw_manifest": {
            "path": raw_manifest.get("path"),
            "sha256": raw_manifest.get("sha256"),
            "content_hash": content.get("content_hash") or content.get("data_hash"),
            "config_hash": content.get("config_hash"),
            "files_verified": bool(raw_manifest.get("files_verified", False)),
        },
    }


def render_report_md(report: dict[str, Any]) -> str:
    """Human-readable Markdown version of :func:`build_report`'s dict."""
    lines = [
        "# Raw data validation report",
        "",
        f"- rows in: **{report['rows_in']:,}**",
        f"- rows valid: **{report['rows_valid']:,}**",
        f"- rows quarantined: **{report['rows_quarantined']:,}** "
        f"({report['quarantine_fraction']:.4%}; limit {report['max_quarantine_fraction']:.2%})",
        f"- values quarantined (row kept, value and unit nulled): **{report.get('values_quarantined', 0):,}**",
        f"- calendar: {report['calendar'][0]}..{report['calendar'][1]}; shards: {report['n_shards']}",
        f"- validated content hash: `{report['validated_content_hash']}`",
        f"- raw manifest: `{report['raw_manifest']['path']}` (sha256 `{report['raw_manifest']['sha256']}`, "
        f"content hash `{report['raw_manifest']['content_hash']}`; shard files verified against it: "
        f"{'yes' if report['raw_manifest'].get('files_verified') else 'no, the manifest has no file hashes'})",
        "",
        "## Failures by check",
        "",
    ]
    if report["failures_by_check"]:
        lines += ["| check | column | rows |", "|---|---|---:|"]
        lines += [f"| {f['check']} | {f['column']} | {f['rows']:,} |" for f in report["failures_by_check"]]
    else:
        lines.append("No failures.")
    lines += [
        "",
        "## Shards",
        "",
        "| shard | rows in | valid | quarantined | input sorted | notes |",
        "|---:|---:|---:|---:|---|---|",
    ]
    for s in report["shards"]:
        notes = []
        if s["extra_columns_dropped"]:
            notes.append("dropped extra columns: " + ", ".join(s["extra_columns_dropped"]))
        if s["recast_columns"]:
            notes.append("recast: " + ", ".join(f"{c} from {t}" for c, t in s["recast_columns"].items()))
        lines.append(
            f"| {s['shard']:03d} | {s['rows_in']:,} | {s['rows_valid']:,} | {s['rows_quarantined']:,} | "
            f"{'yes' if s['input_sorted'] else 'no (re-sorted)'} | {'; '.join(notes)} |"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ShardIds:
    """One validated shard's entity ids for the disjointness gate: their range (``low``, ``high``; None
    when the shard has no non-null id), whether a null id occurs, and how to read the distinct ids
    (``read``), which the gate does only for shards whose ranges overlap another's."""

    low: Any
    high: Any
    has_null: bool
    read: Callable[[], pl.Series]

    @classmethod
    def of(cls, ids: pl.Series) -> ShardIds:
        """The ids already in memory."""
        return cls(ids.min(), ids.max(), ids.null_count() > 0, lambda: ids)


def _check_patients_disjoint(shard_ids: Mapping[int, ShardIds | pl.Series]) -> None:
    """A patient must never span shards (contract); report the first offender: the smallest id found in
    two shards, with every shard that holds it.

    Shards whose id ranges do not overlap cannot share an id, so only runs of overlapping ranges have their
    ids read and compared: the generator's contiguous id blocks need no id at all (at 20M raw rows holding
    every shard's ids, then sorting them, made merge-data's memory grow with the patients: 1.43× its 2M
    peak), and hash-sharded ids, whose ranges all overlap, are checked together as before."""
    shards = {k: v if isinstance(v, ShardIds) else ShardIds.of(v) for k, v in shard_ids.items()}
    if len(shards) < 2:
        return
    if any(v.has_null for v in shards.values()):
        runs = [sorted(shards)]  # a null id has no range: every shard is compared
    else:
        runs, high = [], None
        spans = sorted((v.low, k) for k, v in shards.items() if v.low is not None)
        for low, k in spans:
            if runs and high is not None and low <= high:
                runs[-1].append(k)
                high = max(high, shards[k].high)
            else:
                runs.append([k])
                high = shards[k].high
    for run in runs:  # in order of their ranges: the first clash found is the smallest shared id
        if len(run) > 1:
            _check_disjoint_ids({k: shards[k].read() for k in run})


def _check_disjoint_ids(shard_ids: dict[int, pl.Series]) -> None:
    # One sorted column of every shard's distinct ids: a clash is two equal neighbours. (A group-by with a
    # list of shards per id held ≈ 170 bytes an id: 330 MB at 2M patients, the merge step's peak.)
    ids = pl.concat([s.unique() for s in shard_ids.values()]).sort()
    repeated = ids.filter(ids == ids.shift(1))
    if repeated.len():
        pid: Any = repeated.min()  # an id of the entity column's type
        shards = sorted(k for k, s in shard_ids.items() if (s == pid).any())
        raise DataError(
            f"patient_id {pid} appears in several shards {shards} (a patient must never span shards)"
        )


def validate_raw_shard(
    cfg: ClinriskConfig, raw_dir: Path, shard: int, vroot: Path, qroot: Path, *, per_table: bool = False
) -> dict[str, Any]:
    """One raw shard (``raw_dir/<table>/shard=NNN``: a raw dataset or one shard task's output) through the
    use case's schema (``run.usecase``) into ``vroot``/``qroot``; returns its stats. A schema DataError is
    prefixed with the shard file. The per-shard unit of ``clinrisk validate`` and of the DAG's validate
    step (``per_table``: the task's ``<root>/<table>/`` layout)."""
    from clinrisk.usecase_io import read_raw_shard, write_validated_shard
    from clinrisk.usecases import get

    usecase = get(cfg.run.usecase)
    path = shard_file(Path(raw_dir) / usecase.source.tables[0], shard)
    raw = read_raw_shard(usecase, Path(raw_dir), shard, truth=False)
    try:
        result = usecase.schema.validate(cfg, raw, shard)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    stats = write_validated_shard(result, usecase, vroot, qroot, shard, per_table=per_table)
    stats["file"] = str(path)
    return stats


def shard_entities(cfg: ClinriskConfig, vroot: Path, shard: int) -> pl.Series:
    """The distinct entity ids of one validated shard (its first table), for the disjointness check."""
    table, entity = _entity_table(cfg, vroot, shard)
    return pl.read_parquet(table, columns=[entity]).get_column(entity).unique().rename("patient_id")


def shard_ids(cfg: ClinriskConfig, vroot: Path, shard: int) -> ShardIds:
    """:class:`ShardIds` of one validated shard: its id range now (one aggregate over the id column), the
    ids themselves only if the disjointness gate asks."""
    table, entity = _entity_table(cfg, vroot, shard)
    col = pl.col(entity)
    got = pl.scan_parquet(table).select(col.min().alias("low"), col.max().alias("high"), col.null_count())
    low, high, nulls = got.collect().row(0)
    return ShardIds(low, high, nulls > 0, lambda: shard_entities(cfg, vroot, shard))


def _entity_table(cfg: ClinriskConfig, vroot: Path, shard: int) -> tuple[Path, str]:
    from clinrisk.usecase_io import validated_dir
    from clinrisk.usecases import get

    usecase = get(cfg.run.usecase)
    first = usecase.source.tables[0]
    return shard_file(validated_dir(usecase, vroot, first), shard), usecase.source.entity_column(first)


def _job(args: tuple[ClinriskConfig, Path, int, Path, Path]) -> tuple[dict[str, Any], pl.Series]:
    cfg, raw_dir, shard, vroot, qroot = args
    return validate_raw_shard(cfg, raw_dir, shard, vroot, qroot), shard_entities(cfg, vroot, shard)


def check_shards(manifest: dict[str, Any], indices: list[int], where: Path) -> None:
    """The shards found (``indices``) are exactly those the raw manifest promises, else a DataError."""
    expected = _expected_shards(manifest["content"])
    if expected is not None and expected != sorted(indices):
        missing = sorted(set(expected) - set(indices))
        extra = sorted(set(indices) - set(expected))
        raise DataError(
            f"{where}: shards do not match {manifest['path']} "
            f"(missing: {[f'shard={i:03d}' for i in missing]}, unexpected: {[f'shard={i:03d}' for i in extra]})"
        )


def finish_report(
    cfg: ClinriskConfig,
    manifest: dict[str, Any],
    where: Path,
    shard_stats: Sequence[dict[str, Any]],
    entities: Mapping[int, ShardIds | pl.Series],
) -> dict[str, Any]:
    """The dataset's report from its shards' stats, after the dataset gates (shards as the manifest says, no
    entity in two shards, row count, quarantine share): the one finishing step of ``clinrisk validate``
    and of the DAG's merge-data. A DataError publishes nothing."""
    check_shards(manifest, [int(s["shard"]) for s in shard_stats], where)
    _check_patients_disjoint(entities)
    report = build_report(cfg, shard_stats, manifest)
    check_report(cfg, report, manifest, where)
    return report


def checked_raw_manifest(raw_dir: Path) -> dict[str, Any]:
    """The raw manifest with its shard files verified against it (:func:`verify_raw_files`)."""
    manifest = read_raw_manifest(Path(raw_dir))
    manifest["files_verified"] = verify_raw_files(Path(raw_dir), manifest)
    return manifest


def validate_dataset(
    cfg: ClinriskConfig, raw_dir: Path, out_dir: Path, workers: int | None = None
) -> dict[str, Any]:
    """Validate every shard of the use case's raw tables (``raw_dir/<table>``, clinical: ``observed``) and
    publish atomically under ``out_dir``.

    Writes ``out_dir/validated/shard=NNN/part.parquet`` (``validated/<table>/...`` for a use case with
    several tables), the quarantine twin and ``out_dir/validation/{report.json,report.md}`` (the run layout
    when ``out_dir`` is the run root). Nothing is published if any shard fails or the quarantined share
    exceeds ``validate.max_quarantine_fraction``. Returns the report dict.
    """
    out_dir = Path(out_dir)
    return validate_to(
        cfg, raw_dir, out_dir / VALIDATED_DIR, out_dir / QUARANTINE_DIR, out_dir / REPORT_DIR, workers
    )


def validate_to(
    cfg: ClinriskConfig,
    raw_dir: Path,
    validated: Path,
    quarantine: Path,
    report_dir: Path,
    workers: int | None = None,
) -> dict[str, Any]:
    """:func:`validate_dataset` into three given folders (each published atomically, all or none)."""
    from clinrisk.usecases import get

    raw_dir = Path(raw_dir)
    manifest = checked_raw_manifest(raw_dir)
    first = get(cfg.run.usecase).source.tables[0]
    files = list_shards(raw_dir / first)
    indices = [_shard_index(f) for f in files]
    check_shards(manifest, indices, raw_dir / first)
    n_workers = max(1, min(workers or cfg.run.workers, len(files)))
    with ExitStack() as stack:
        vroot = stack.enter_context(atomic_output_dir(Path(validated)))
        qroot = stack.enter_context(atomic_output_dir(Path(quarantine)))
        rroot = stack.enter_context(atomic_output_dir(Path(report_dir)))
        jobs = [(cfg, raw_dir, i, vroot, qroot) for i in indices]
        if n_workers == 1:
            results = [_job(j) for j in jobs]
        else:
            # spawn, not fork: polars' thread pool does not survive fork.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
                results = list(pool.map(_job, jobs))
        report = finish_report(
            cfg, manifest, raw_dir / first, [r[0] for r in results], {s["shard"]: ids for s, ids in results}
        )
        write_report(report, rroot)
    return report


def check_report(
    cfg: ClinriskConfig, report: dict[str, Any], manifest: dict[str, Any], where: Path | str
) -> None:
    """Stage gates on a built report: row count equals the raw manifest's, quarantine share within the limit."""
    n_expected = _expected_rows(manifest["content"])
    if report["rows_in"] == 0:
        raise DataError(f"{where}: no rows to validate ({manifest['path']} describes an empty dataset)")
    if n_expected is not None and n_expected != report["rows_in"]:
        raise DataError(f"{where}: {report['rows_in']} rows read but {manifest['path']} says {n_expected}")
    if report["quarantine_fraction"] > cfg.validate_.max_quarantine_fraction:
        failures = [
            *report["failures_by_check"],
            *({**f, "rows": f["values"]} for f in report.get("value_failures_by_check", [])),
        ]
        top = sorted(failures, key=lambda f: -f["rows"])[:5]
        touched = report["rows_quarantined"] + report.get("rows_with_quarantined_values", 0)
        raise DataError(
            f"{where}: {touched} of {report['rows_in']} rows quarantined whole or in part "
            f"({report['quarantine_fraction']:.2%}) > validate.max_quarantine_fraction="
            f"{cfg.validate_.max_quarantine_fraction}; top checks: "
            + json.dumps([f"{f['check']}[{f['column']}]={f['rows']}" for f in top])
        )


def write_report(report: dict[str, Any], report_dir: Path) -> None:
    """Write ``report.json`` and ``report.md`` into ``report_dir``."""
    write_json(Path(report_dir) / "report.json", report)
    (Path(report_dir) / "report.md").write_text(render_report_md(report))
