"""Ingestion of a lead-conversion export: three CSV files -> typed, validated tables + quarantine with reasons.

File-level problems reject the file with one line naming it (and the line, where there is one): a missing
file, a file that is not CSV text, a line with the wrong number of fields, a missing column, a column none of
whose values parse. Row-level problems quarantine the row with every reason it failed: a value that does not
parse (an unparsable date, ``'abc'`` as a count, an unknown employee range), a negative count or rank, a
duplicate key, an ID in both customers and noncustomers (both rows go), usage for an unknown company.

Counts add up per file: ``rows_in = rows_valid + rows_quarantined``. Quarantine rows carry the original text
of the row, its CSV line number (header = line 1) and the joined reasons. The pure core is
:func:`validate_tables` (frames in, frames out); :func:`read_export` and :func:`ingest_to_dir` do the I/O.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandera.errors as pa_errors
import polars as pl

from clinrisk.errors import DataError
from clinrisk.io import atomic_output_dir, write_json
from clinrisk.schemas import Rule
from clinrisk.usecases.leads.schemas import company_rules, file_schema, usage_rules
from clinrisk.usecases.leads.tables import CONTRACTS, CUSTOMERS_FILE, NONCUSTOMERS_FILE, USAGE_FILE

__all__ = [
    "QUARANTINE_COLUMNS",
    "FileResult",
    "LeadsTables",
    "cast_file",
    "ingest_to_dir",
    "read_csv_text",
    "read_export",
    "validate_file",
    "validate_tables",
]

FILES = (CUSTOMERS_FILE, NONCUSTOMERS_FILE, USAGE_FILE)
QUARANTINE_COLUMNS = ("_row", "_check", "_column", "_reason", "_line")
LINE = "_line"  # 1-based CSV line of a row (header = line 1), added by the reader, kept through sharding
_FAIL_SCHEMA = {"_row": pl.UInt32, "_check": pl.String, "_column": pl.String, "_reason": pl.String}
_TS_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d",
)


@dataclass
class FileResult:
    """One file after validation: passing rows (contract dtypes), quarantined rows (text) and counts."""

    file: str
    valid: pl.DataFrame
    quarantine: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class LeadsTables:
    """The validated export: the three typed tables and, per file, the quarantine and counts."""

    customers: pl.DataFrame
    noncustomers: pl.DataFrame
    usage: pl.DataFrame
    results: dict[str, FileResult]

    def report(self) -> dict[str, Any]:
        return {f: r.stats for f, r in self.results.items()}


# ----------------------------------------------------------------------------------------------- reading


def _locate_csv_problem(path: Path, n_fields: int) -> str:
    """The first line of ``path`` that is not UTF-8 or has the wrong field count (``""`` if none found)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return f"line {line}: not UTF-8 text (byte {exc.start})"
    reader = csv.reader(text.splitlines())
    for i, rec in enumerate(reader, start=1):
        if rec and len(rec) != n_fields:
            return f"line {i}: expected {n_fields} fields (as in the header), found {len(rec)}"
    return ""


def read_csv_text(path: Path) -> pl.DataFrame:
    """Read a CSV file with every column as text; any problem is one :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        header = pl.read_csv(path, n_rows=0, infer_schema=False).columns
    except Exception as exc:  # empty file, binary garbage: polars' own message is short and names no line
        where = _locate_csv_problem(path, 0) if path.stat().st_size else "the file is empty"
        raise DataError(f"{path}: not a CSV file with a header ({where or type(exc).__name__})") from None
    try:
        text = pl.read_csv(path, infer_schema=False, raise_if_empty=False)
    except Exception as exc:
        where = _locate_csv_problem(path, len(header))
        raise DataError(f"{path}: {where or f'unreadable CSV ({type(exc).__name__})'}") from None
    # line numbers assume one line per record (no newlines inside quoted fields)
    return text.with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + 2).alias(LINE))


def read_export(folder: Path) -> dict[str, pl.DataFrame]:
    """The three files of an export folder, as text frames."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: export folder not found")
    return {f: read_csv_text(folder / f) for f in FILES}


# ----------------------------------------------------------------------------------------------- casting


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
        schema=_FAIL_SCHEMA,
    )


def _parse(text: pl.Series, dtype: pl.DataType) -> pl.Series:
    s = text.str.strip_chars()
    if isinstance(dtype, pl.Datetime):
        frame = pl.DataFrame({"s": s})
        parsed = [pl.col("s").str.strptime(dtype, f, strict=False, exact=True) for f in _TS_FORMATS]
        return frame.select(pl.coalesce(parsed)).to_series()
    if isinstance(dtype, pl.Enum):
        return s.set(~s.is_in(list(dtype.categories)).fill_null(False), None).cast(dtype)  # type: ignore[arg-type]
    out = s.cast(dtype, strict=False)
    if dtype.is_integer():
        # spreadsheet exports write integers as "24.0" or "1.5e6": accept a value that is a whole number
        f = s.cast(pl.Float64, strict=False)
        whole = f.is_not_null() & f.is_finite() & (f == f.round(0)) & (f.abs() < 2.0**53)
        out = pl.select(
            pl.when(out.is_null() & whole).then(f.cast(dtype, strict=False)).otherwise(out)
        ).to_series()
    return out


def cast_file(file: str, text: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Cast a text frame to the file's contract (contract order, extra columns dropped).

    Returns ``(typed, failures)``. A missing column, or a column whose non-empty values all fail to parse, is
    a :class:`DataError` naming the file and column.
    """
    contract = CONTRACTS[file]
    missing = [c for c in contract if c not in text.columns]
    if missing:
        header = ", ".join(c for c in text.columns if c != LINE)
        raise DataError(
            f"{file}: required column(s) missing: {', '.join(missing)} (the header has: {header[:200]})"
        )
    cols: list[pl.Series] = []
    fails: list[pl.DataFrame] = []
    idx = pl.Series("_row", range(text.height), dtype=pl.UInt32)
    lines = text.get_column(LINE) if LINE in text.columns else idx.cast(pl.Int64) + 2
    for name, dtype in contract.items():
        if text.schema[name] == dtype:  # already typed (generated data, Parquet): nothing to parse
            cols.append(text.get_column(name))
            continue
        src = text.get_column(name).cast(pl.String)
        src = src.set(src.str.strip_chars() == "", None)  # type: ignore[arg-type]  # blank = missing
        out = _parse(src, dtype).alias(name)
        bad = src.is_not_null() & out.is_null()
        n_bad, n_nonnull = int(bad.sum()), src.len() - src.null_count()
        if n_bad and n_bad == n_nonnull and n_nonnull > 1:
            first = int(bad.arg_true()[0])
            raise DataError(
                f"{file}: line {lines[first]}: column {name!r}: none of its {n_nonnull} values parse as {dtype} "
                f"(e.g. {src[first]!r})"
            )
        if n_bad:
            what = f"one of {', '.join(dtype.categories)}" if isinstance(dtype, pl.Enum) else str(dtype)
            reasons = "cannot read '" + src.filter(bad) + f"' as {what}"
            fails.append(_failures(idx.filter(bad), "parse", name, reasons))
        cols.append(out)
    failures = pl.concat(fails) if fails else pl.DataFrame(schema=_FAIL_SCHEMA)
    return pl.DataFrame(cols), failures


# -------------------------------------------------------------------------------------------- validation


def _pandera_failures(file: str, typed: pl.DataFrame, rules: Sequence[Rule]) -> pl.DataFrame:
    """Run the file's pandera schema lazily: one failure row per (row, check)."""
    try:
        file_schema(file, rules).validate(typed, lazy=True)
    except pa_errors.SchemaErrors as exc:
        fc = exc.failure_cases
    else:
        return pl.DataFrame(schema=_FAIL_SCHEMA)
    if fc.get_column("index").null_count():
        bad = fc.filter(pl.col("index").is_null()).head(3).to_dicts()
        raise DataError(f"{file}: schema-level validation failure: {bad}")
    by_key = {(r.column, r.name): (r.label, r.reason) for r in rules}
    rows = []
    for col, check, idx in fc.select("column", "check", "index").iter_rows():
        label, reason = by_key.get(
            (col, check), (col, f"{col} must not be empty" if check == "not_nullable" else check)
        )
        rows.append((idx, check, label, reason))
    return pl.DataFrame(rows, schema=_FAIL_SCHEMA, orient="row")


def validate_file(file: str, text: pl.DataFrame, rules: Sequence[Rule]) -> FileResult:
    """Cast and validate one file (pure). Rows with any failure go to quarantine with all their reasons."""
    typed, cast_fails = cast_file(file, text)
    fails = pl.concat([cast_fails, _pandera_failures(file, typed, rules)])
    # a value that did not parse is null now; its not_nullable failure repeats the parse failure
    parsed_bad = cast_fails.select("_row", "_column")
    fails = fails.join(
        parsed_bad.with_columns(pl.lit(True).alias("_dup")), on=["_row", "_column"], how="left"
    ).filter(~(pl.col("_dup").fill_null(False) & (pl.col("_check") == "not_nullable")))
    per_row = (
        fails.unique(["_row", "_check", "_column"])
        .sort("_row", "_column", "_check")
        .group_by("_row", maintain_order=True)
        .agg(
            pl.col("_check").str.join("; "),
            pl.col("_column").str.join("; "),
            pl.col("_reason").str.join("; "),
        )
    )
    bad = pl.Series(range(text.height), dtype=pl.UInt32).is_in(per_row.get_column("_row").implode())
    original = [c for c in text.columns if c != LINE]
    if LINE not in text.columns:
        text = text.with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + 2).alias(LINE))
    quarantine = (
        text.with_row_index("_row")
        .join(per_row, on="_row", how="inner", maintain_order="left")
        .select(*QUARANTINE_COLUMNS, *(pl.col(c).cast(pl.String) for c in original))
    )
    by_check = fails.group_by("_check").len().sort("_check")
    stats = {
        "rows_in": text.height,
        "rows_valid": int((~bad).sum()),
        "rows_quarantined": int(bad.sum()),
        "failures_by_check": dict(zip(by_check["_check"].to_list(), by_check["len"].to_list(), strict=True)),
        "dropped_columns": [c for c in original if c not in CONTRACTS[file]],
    }
    return FileResult(file, typed.filter(~bad), quarantine, stats)


def _ids(file: str, text: pl.DataFrame) -> pl.Series:
    """The IDs of a company file, parsed as :func:`cast_file` would (for the cross-file rules)."""
    if "ID" not in text.columns:
        cast_file(file, text)  # raises the missing-column error, with the header
    src = text.get_column("ID")
    return (src if src.dtype == pl.Int64 else _parse(src.cast(pl.String), pl.Int64())).drop_nulls()


def validate_tables(texts: dict[str, pl.DataFrame], max_quarantine_fraction: float = 1.0) -> LeadsTables:
    """Validate an export's three text frames (pure core). Raises :class:`DataError` when a file is rejected
    or quarantines more than ``max_quarantine_fraction`` of its rows."""
    for f in FILES:
        if f not in texts:
            raise DataError(f"{f}: file missing from the export")
    cust = validate_file(
        CUSTOMERS_FILE,
        texts[CUSTOMERS_FILE],
        company_rules(CUSTOMERS_FILE, _ids(NONCUSTOMERS_FILE, texts[NONCUSTOMERS_FILE])),
    )
    non = validate_file(
        NONCUSTOMERS_FILE,
        texts[NONCUSTOMERS_FILE],
        company_rules(NONCUSTOMERS_FILE, _ids(CUSTOMERS_FILE, texts[CUSTOMERS_FILE])),
    )
    known = pl.concat([cust.valid.get_column("ID"), non.valid.get_column("ID")])
    usage = validate_file(USAGE_FILE, texts[USAGE_FILE], usage_rules(known))
    results = {r.file: r for r in (cust, non, usage)}
    for r in results.values():
        n_in, n_q = r.stats["rows_in"], r.stats["rows_quarantined"]
        if n_in and n_q / n_in > max_quarantine_fraction:
            top = r.quarantine.head(1).row(0, named=True)
            raise DataError(
                f"{r.file}: {n_q} of {n_in} rows quarantined ({n_q / n_in:.1%} > max_quarantine_fraction "
                f"{max_quarantine_fraction:.1%}); first: line {top[LINE]}: {top['_reason']}"
            )
    return LeadsTables(
        customers=cust.valid.sort("ID"),
        noncustomers=non.valid.sort("ID"),
        usage=usage.valid.sort("ID", "WHEN_TIMESTAMP"),
        results=results,
    )


def ingest_to_dir(folder: Path, out: Path, max_quarantine_fraction: float) -> dict[str, Any]:
    """Read and validate an export folder; publish ``out/{validated,quarantine}/<file>.parquet`` and
    ``out/report.json`` atomically (nothing is published when a file is rejected)."""
    tables = validate_tables(read_export(folder), max_quarantine_fraction)
    with atomic_output_dir(Path(out)) as tmp:
        (tmp / "validated").mkdir()
        (tmp / "quarantine").mkdir()
        for f, r in tables.results.items():
            stem = f.removesuffix(".csv")
            valid = {
                "customers": tables.customers,
                "noncustomers": tables.noncustomers,
                "usage_actions": tables.usage,
            }
            valid[stem].write_parquet(tmp / "validated" / f"{stem}.parquet", statistics=False)
            r.quarantine.write_parquet(tmp / "quarantine" / f"{stem}.parquet", statistics=False)
        report = tables.report()
        write_json(tmp / "report.json", report)
    return report
