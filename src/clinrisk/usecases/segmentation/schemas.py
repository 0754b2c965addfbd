"""pandera contracts of the raw image table and of the validated image manifest.

The manifest rules are plain polars expressions (one reason each); the pandera schema wraps the same
expressions, so quarantine reasons and pandera failure cases cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandera.polars as pa
import polars as pl

__all__ = ["MANIFEST_RULES", "MANIFEST_SCHEMA", "RAW_SCHEMA", "quarantine_manifest_failures"]


@dataclass(frozen=True)
class ManifestRule:
    check: str
    column: str
    ok: pl.Expr  # True = the row passes (null-safe)
    reason: str


MAX_SIDE = 8192
MANIFEST_RULES = (
    ManifestRule(
        "not_null",
        "image_id",
        pl.col("image_id").is_not_null() & (pl.col("image_id").str.len_chars() > 0),
        "image_id must be a non-empty name",
    ),
    ManifestRule(
        "unique",
        "image_id",
        ~pl.col("image_id").is_duplicated(),
        "image_id appears more than once; every copy is quarantined",
    ),
    ManifestRule(
        "ge_0", "patient_id", (pl.col("patient_id") >= 0).fill_null(False), "patient_id must be >= 0"
    ),
    ManifestRule(
        "side",
        "height",
        pl.col("height").is_between(16, MAX_SIDE).fill_null(False),
        f"height must be 16..{MAX_SIDE} px",
    ),
    ManifestRule(
        "side",
        "width",
        pl.col("width").is_between(16, MAX_SIDE).fill_null(False),
        f"width must be 16..{MAX_SIDE} px",
    ),
    ManifestRule(
        "dtype",
        "dtype",
        pl.col("dtype").is_in(["uint8", "uint16"]).fill_null(False),
        "dtype must be uint8 or uint16",
    ),
    ManifestRule(
        "coverage",
        "mask_coverage",
        pl.col("mask_coverage").is_between(0.0, 1.0).fill_null(False),
        "mask_coverage must be in [0, 1]",
    ),
    ManifestRule("not_null", "site", pl.col("site").is_not_null(), "site must be set"),
)


def _column(name: str, dtype: type[pl.DataType]) -> pa.Column:
    checks = [
        pa.Check(lambda data, r=r: data.lazyframe.select(r.ok), name=r.check, error=r.reason)
        for r in MANIFEST_RULES
        if r.column == name
    ]
    return pa.Column(dtype, checks=checks, nullable=False)


MANIFEST_SCHEMA = pa.DataFrameSchema(
    {
        "image_id": _column("image_id", pl.String),
        "patient_id": _column("patient_id", pl.Int64),
        "patient": pa.Column(pl.String),
        "site": _column("site", pl.String),
        "path": pa.Column(pl.String, nullable=False),
        "height": _column("height", pl.Int64),
        "width": _column("width", pl.Int64),
        "dtype": _column("dtype", pl.String),
        "mask_coverage": _column("mask_coverage", pl.Float64),
    },
    name="segmentation image manifest",
)

RAW_SCHEMA = pa.DataFrameSchema(
    {
        "image_id": pa.Column(pl.String, nullable=False),
        "patient_id": pa.Column(pl.Int64, nullable=True),
        "patient": pa.Column(pl.String, nullable=True),
        "site": pa.Column(pl.String, nullable=True),
        "file": pa.Column(pl.String, nullable=False),
        "image": pa.Column(pl.Binary, nullable=True),  # null: no image file for a mask (quarantined)
        "mask": pa.Column(pl.Binary, nullable=True),
    },
    name="segmentation raw images",
)


def quarantine_manifest_failures(manifest: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(passing rows, failing rows' ``_row, _check, _column, _reason``) — the first failed rule per row.

    The passing rows are then checked by the pandera schema itself (a row passing every rule passes it)."""
    if manifest.height == 0:
        empty = pl.DataFrame(
            schema={"_row": pl.Int64, "_check": pl.String, "_column": pl.String, "_reason": pl.String}
        )
        return manifest, empty
    flags = manifest.select(pl.col("_row"), *[r.ok.alias(f"ok{i}") for i, r in enumerate(MANIFEST_RULES)])
    failing = []
    for row in flags.iter_rows():
        for i, ok in enumerate(row[1:]):
            if not ok:
                r = MANIFEST_RULES[i]
                failing.append({"_row": row[0], "_check": r.check, "_column": r.column, "_reason": r.reason})
                break
    failed = pl.DataFrame(
        failing, schema={"_row": pl.Int64, "_check": pl.String, "_column": pl.String, "_reason": pl.String}
    )
    passing = manifest.filter(~pl.col("_row").is_in(failed["_row"].implode()))
    MANIFEST_SCHEMA.validate(passing.drop("image", "mask", "_row"))
    return passing, failed
