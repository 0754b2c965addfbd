"""Company-grouped, forward-in-time split of lead-conversion prediction rows.

A company's bucket is ``SplitMix64(ID) mod 100`` (``clinrisk.splits``), so all its snapshots share one side.
Train and validation rows need their label window closed before the test period starts (``SNAPSHOT +
horizon <= test_from``: a label embargo); test rows are snapshots on or after ``test_from`` of test-bucket
companies. Everything else is ``embargo`` (train/validation companies whose window straddles ``test_from``)
or ``unused`` (test-bucket companies before it, train companies after it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import polars as pl

from clinrisk.config import SplitConfig
from clinrisk.splits import SPLIT_DTYPE, patient_bucket_expr
from clinrisk.usecases.leads.config import LeadsSplitConfig

__all__ = ["assign_split", "first_test_snapshot", "in_buckets"]


def first_test_snapshot(cfg: LeadsSplitConfig, snapshots: Sequence[dt.datetime]) -> dt.datetime:
    """``cfg.test_from``, or the first snapshot of the last ``cfg.test_fraction`` of the grid."""
    if cfg.test_from is not None:
        return dt.datetime.combine(cfg.test_from, dt.time())
    grid = sorted(snapshots)
    return grid[min(len(grid) - 1, int(len(grid) * (1 - cfg.test_fraction)))]


def _in(b: pl.Expr, rng: tuple[int, int]) -> pl.Expr:
    return (b >= rng[0]) & (b < rng[1])


def in_buckets(buckets: tuple[int, int], column: str = "ID") -> pl.Expr:
    """Rows whose company hash bucket is in the half-open range ``buckets``."""
    return _in(patient_bucket_expr(column), buckets)


def assign_split(
    rows: pl.LazyFrame, cfg: SplitConfig, test_from: dt.datetime, horizon_days: int
) -> pl.LazyFrame:
    """Add ``split`` (Enum train/validation/test/embargo/unused) to rows with ID and SNAPSHOT; company
    buckets from the shared ``cfg`` (its year ranges are not used)."""
    b = patient_bucket_expr("ID")
    s = pl.col("SNAPSHOT")
    start = pl.lit(test_from, dtype=pl.Datetime("us"))
    closed = s + pl.duration(days=horizon_days) <= start
    split = (
        pl.when(_in(b, cfg.train_buckets) & closed)
        .then(pl.lit("train"))
        .when(_in(b, cfg.validation_buckets) & closed)
        .then(pl.lit("validation"))
        .when(_in(b, cfg.test_buckets) & (s >= start))
        .then(pl.lit("test"))
        .when(~_in(b, cfg.test_buckets) & (s < start))
        .then(pl.lit("embargo"))
        .otherwise(pl.lit("unused"))
    )
    return rows.with_columns(split.cast(SPLIT_DTYPE).alias("split"))
