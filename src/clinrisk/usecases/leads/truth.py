"""The true probability that a company converts within the label window of a snapshot, from the generator's
weekly hazard.

The generator draws conversion week by week: in week ``t`` (days ``(W_t, W_t + 7]``) a company not yet
converted converts with probability ``h_t``, on a day uniform over the week. For a snapshot ``s`` on the
weekly grid and a horizon of ``N`` days (``N = 7q + r``), given no conversion by ``s``::

    P(convert in (s, s + N]) = 1 - prod_{j < q} (1 - h_{s + 7j}) * (1 - h_{s + 7q} * r / 7)

This is the *realised-path* truth: the hazards after ``s`` are the ones the simulation drew (they depend on
the company's future usage), so it is the exact Bernoulli probability of the recorded label, and the
ceiling any model reading data before ``s`` can approach but not reach.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from clinrisk.errors import DataError

__all__ = ["snapshot_truth"]

_WEEK_US = 7 * 86_400_000_000


def snapshot_truth(
    rows: pl.LazyFrame, hazard: pl.LazyFrame, horizon_days: int, grid_origin: dt.datetime
) -> pl.LazyFrame:
    """Add ``P_TRUE`` to ``rows`` (ID, SNAPSHOT); ``hazard`` is (ID, WEEK_START, HAZARD) with weeks missing
    where the hazard is zero. Every SNAPSHOT must be on the weekly grid of ``grid_origin``."""
    q, r = divmod(horizon_days, 7)
    origin = pl.lit(grid_origin, dtype=pl.Datetime("us"))
    week = (pl.col("SNAPSHOT") - origin).dt.total_microseconds()
    off_grid = rows.select((week % _WEEK_US != 0).any()).collect().item()
    if off_grid:
        raise DataError(
            f"truth: snapshots must fall on the generator's weekly grid (origin {grid_origin:%Y-%m-%d})"
        )
    h = hazard.select(
        "ID",
        ((pl.col("WEEK_START") - origin).dt.total_microseconds() // _WEEK_US).cast(pl.Int64).alias("_w"),
        "HAZARD",
    )
    r_rows = rows.with_columns((week // _WEEK_US).cast(pl.Int64).alias("_w0"))
    # one row per (prediction row, week of its window): at most q + 1 weeks each
    offsets = pl.LazyFrame({"_j": list(range(q + (1 if r else 0)))}, schema={"_j": pl.Int64})
    per_week = (
        r_rows.select("ID", "SNAPSHOT", "_w0")
        .join(offsets, how="cross")
        .with_columns((pl.col("_w0") + pl.col("_j")).alias("_w"))
        .join(h, on=["ID", "_w"], how="left")
        .with_columns(
            (pl.col("HAZARD").fill_null(0.0) * pl.when(pl.col("_j") < q).then(1.0).otherwise(r / 7)).alias(
                "_p"
            )
        )
        .group_by("ID", "SNAPSHOT")
        .agg((1.0 - (1.0 - pl.col("_p")).product()).alias("P_TRUE"))
    )
    return rows.join(per_week, on=["ID", "SNAPSHOT"], how="left")
