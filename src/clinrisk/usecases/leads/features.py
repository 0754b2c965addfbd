"""Point-in-time features and labels of the lead-conversion use case (polars, lazy).

A *prediction row* is a (company, snapshot) pair: the company has usage stamped before the snapshot, has not
converted by it (no CLOSEDATE, or CLOSEDATE after the snapshot), and the label window
``(snapshot, snapshot + horizon_days]`` ends by the end of the data. Rows after conversion are never
prediction rows.

Every usage feature reads only rows with ``WHEN_TIMESTAMP < snapshot`` (strictly before): window sums are
differences of per-company running totals looked up with as-of joins that exclude exact matches, so the cost
is O(usage rows + prediction rows x windows), never a company x snapshot x row product. Because a prediction
row's snapshot precedes its CLOSEDATE, usage on or after CLOSEDATE can never reach it.

:func:`build_features` is the one feature definition: training calls it on the whole export, serving calls
it on a request's firmographics and usage rows, with the same frozen :class:`LeadsFeatureSpec`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import polars as pl
from pydantic import BaseModel, ConfigDict

from clinrisk.errors import DataError
from clinrisk.feature_table import OTHER
from clinrisk.usecases.leads.config import LeadsFeaturesConfig
from clinrisk.usecases.leads.tables import EMPLOYEE_RANGES, USAGE_COLUMNS

__all__ = [
    "KEY",
    "LeadsFeatureSpec",
    "build_features",
    "companies_frame",
    "data_end",
    "feature_dtypes",
    "feature_names",
    "fit_feature_spec",
    "industry_levels",
    "label_rows",
    "prediction_rows",
    "snapshot_grid",
]

KEY = ("ID", "SNAPSHOT")
TS = pl.Datetime("us")
_ACTIVE = "ACTIVE_WEEKS"  # usage rows in a window (the export has one row per active week)


class LeadsFeatureSpec(BaseModel):
    """Frozen after fitting on training data; the bundle carries it to serving."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows_days: tuple[int, ...]
    industries: tuple[str, ...]  # the coded levels; any other non-null industry is OTHER
    horizon_days: int


def feature_names(spec: LeadsFeatureSpec) -> list[str]:
    """Model input columns, in matrix order."""
    names = [f"{c}_{w}D" for w in spec.windows_days for c in (*USAGE_COLUMNS, _ACTIVE)]
    return [
        *names,
        "ACTIONS_ALL_TIME",
        "DAYS_SINCE_LAST_USAGE",
        "DAYS_SINCE_FIRST_USAGE",
        "LOG10_ALEXA_RANK",
        "EMPLOYEE_RANGE_ORD",
        "INDUSTRY_GROUP",
        "SNAPSHOT_MONTH",
        "DAYS_TO_QUARTER_END",
    ]


def industry_levels(spec: LeadsFeatureSpec) -> list[str]:
    """Levels of the INDUSTRY_GROUP feature: the coded industries, then ``OTHER``."""
    return [*spec.industries, OTHER]


def feature_dtypes(spec: LeadsFeatureSpec) -> dict[str, pl.DataType]:
    """The dtype of every feature (the shared feature table allows Float32/Int8/Int16/UInt8/Enum)."""
    out: dict[str, pl.DataType] = {}
    for name in feature_names(spec):
        if name.startswith(_ACTIVE):
            out[name] = pl.Int16()
        elif name in ("EMPLOYEE_RANGE_ORD", "SNAPSHOT_MONTH"):
            out[name] = pl.Int8()
        elif name == "DAYS_TO_QUARTER_END":
            out[name] = pl.Int16()
        elif name == "INDUSTRY_GROUP":
            out[name] = pl.Enum(industry_levels(spec))
        else:
            out[name] = pl.Float32()
    return out


def fit_feature_spec(companies: pl.DataFrame, cfg: LeadsFeaturesConfig) -> LeadsFeatureSpec:
    """Industries coded: the ``cfg.top_industries`` most frequent among ``companies`` (ties by name)."""
    counts = (
        companies.get_column("INDUSTRY")
        .drop_nulls()
        .value_counts()
        .sort(["count", "INDUSTRY"], descending=[True, False])
    )
    return LeadsFeatureSpec(
        windows_days=tuple(cfg.windows_days),
        industries=tuple(counts.get_column("INDUSTRY").head(cfg.top_industries).to_list()),
        horizon_days=cfg.horizon_days,
    )


def companies_frame(customers: pl.DataFrame, noncustomers: pl.DataFrame) -> pl.DataFrame:
    """One row per company: ID, CLOSEDATE (null for noncustomers), firmographics."""
    return pl.concat(
        [
            customers.select("ID", "CLOSEDATE", "ALEXA_RANK", "EMPLOYEE_RANGE", "INDUSTRY"),
            noncustomers.select(
                "ID", pl.lit(None, dtype=TS).alias("CLOSEDATE"), "ALEXA_RANK", "EMPLOYEE_RANGE", "INDUSTRY"
            ),
        ]
    ).sort("ID")


def data_end(usage: pl.DataFrame) -> dt.datetime:
    """The end of the observed data: the last usage timestamp."""
    end = usage.get_column("WHEN_TIMESTAMP").max()
    if end is None:
        raise DataError("usage_actions.csv: no usage rows")
    assert isinstance(end, dt.datetime)
    return end


def snapshot_grid(first: dt.datetime, end: dt.datetime, cfg: LeadsFeaturesConfig) -> list[dt.datetime]:
    """Snapshot dates every ``cfg.cadence_days`` from ``first`` to the last one whose label window
    ``(s, s + horizon_days]`` ends by ``end``."""
    last = end - dt.timedelta(days=cfg.horizon_days)
    out: list[dt.datetime] = []
    s = first
    while s <= last:
        out.append(s)
        s += dt.timedelta(days=cfg.cadence_days)
    if not out:
        raise DataError(
            f"features: the data ({first:%Y-%m-%d} .. {end:%Y-%m-%d}) is too short for one snapshot "
            f"with a {cfg.horizon_days}-day label window"
        )
    return out


def prediction_rows(
    companies: pl.DataFrame, usage: pl.DataFrame, snapshots: Sequence[dt.datetime]
) -> pl.DataFrame:
    """(ID, SNAPSHOT) for every company with usage before the snapshot and not converted by it."""
    first_use = usage.group_by("ID").agg(pl.col("WHEN_TIMESTAMP").min().alias("_first"))
    grid = pl.DataFrame({"SNAPSHOT": pl.Series(list(snapshots), dtype=TS)})
    return (
        companies.select("ID", "CLOSEDATE")
        .join(first_use, on="ID", how="inner")
        .join(grid, how="cross")
        .filter(
            (pl.col("_first") < pl.col("SNAPSHOT"))
            & (pl.col("CLOSEDATE").is_null() | (pl.col("CLOSEDATE") > pl.col("SNAPSHOT")))
        )
        .select("ID", "SNAPSHOT")
        .sort("ID", "SNAPSHOT")
    )


def label_rows(rows: pl.DataFrame, companies: pl.DataFrame, horizon_days: int) -> pl.DataFrame:
    """Add ``LABEL`` (1 when CLOSEDATE is in ``(SNAPSHOT, SNAPSHOT + horizon_days]``) to prediction rows."""
    horizon = pl.duration(days=horizon_days)
    close = pl.col("CLOSEDATE")
    return (
        rows.join(companies.select("ID", "CLOSEDATE"), on="ID", how="left")
        .with_columns(
            ((close > pl.col("SNAPSHOT")) & (close <= pl.col("SNAPSHOT") + horizon))
            .fill_null(False)
            .cast(pl.Int8)
            .alias("LABEL")
        )
        .drop("CLOSEDATE")
    )


def _running_totals(usage: pl.DataFrame) -> pl.LazyFrame:
    """Per company, running totals of every usage column and the row count, at each usage timestamp."""
    return (
        usage.lazy()
        .select("ID", "WHEN_TIMESTAMP", *USAGE_COLUMNS)
        .sort("ID", "WHEN_TIMESTAMP")
        .with_columns(
            *(pl.col(c).cum_sum().over("ID").alias(c) for c in USAGE_COLUMNS),
            pl.int_range(1, pl.len() + 1).over("ID").alias(_ACTIVE),
            pl.col("WHEN_TIMESTAMP").first().over("ID").alias("_first"),
        )
        .sort("WHEN_TIMESTAMP")
    )


def _totals_before(rows: pl.LazyFrame, totals: pl.LazyFrame, at: pl.Expr, suffix: str) -> pl.LazyFrame:
    """Running totals of the last usage row stamped strictly before ``at`` (zeros when there is none)."""
    cols = [*USAGE_COLUMNS, _ACTIVE]
    right = totals.select(
        "ID",
        pl.col("WHEN_TIMESTAMP").alias("_at"),
        *(pl.col(c).alias(c + suffix) for c in cols),
        pl.col("WHEN_TIMESTAMP").alias("_last" + suffix),
        pl.col("_first").alias("_first" + suffix),
    )
    left = rows.with_columns(at.alias("_at")).sort("_at")
    joined = left.join_asof(
        right, on="_at", by="ID", strategy="backward", allow_exact_matches=False, check_sortedness=False
    )  # both sides are sorted on the time key just above; polars cannot check it per group
    return joined.drop("_at").with_columns(pl.col(c + suffix).fill_null(0) for c in cols)


def build_features(
    rows: pl.DataFrame, companies: pl.DataFrame, usage: pl.DataFrame, spec: LeadsFeatureSpec
) -> pl.DataFrame:
    """Features of each (ID, SNAPSHOT) row from the companies' firmographics and usage strictly before the
    snapshot. Extra columns of ``rows`` (label, split) are kept. The output is sorted by (ID, SNAPSHOT)."""
    if rows.select(pl.struct(KEY).is_duplicated().any()).item():
        raise DataError("prediction rows: duplicate (ID, SNAPSHOT)")
    totals = _running_totals(usage)
    lf = _totals_before(rows.lazy(), totals, pl.col("SNAPSHOT"), "_NOW")
    for w in spec.windows_days:
        lf = _totals_before(lf, totals, pl.col("SNAPSHOT") - pl.duration(days=w), f"_M{w}")
    snap = pl.col("SNAPSHOT")
    window_feats = [
        (pl.col(f"{c}_NOW") - pl.col(f"{c}_M{w}")).alias(f"{c}_{w}D")
        for w in spec.windows_days
        for c in (*USAGE_COLUMNS, _ACTIVE)
    ]
    actions = [c for c in USAGE_COLUMNS if c.startswith("ACTIONS_")]
    days = 86_400_000_000  # microseconds per day
    quarter_end = pl.date(
        snap.dt.year() + (snap.dt.month() > 9).cast(pl.Int32),
        ((snap.dt.month() - 1) // 3 * 3 + 3) % 12 + 1,
        1,
    )
    industry = pl.col("INDUSTRY")
    feats = lf.with_columns(
        *window_feats,
        pl.sum_horizontal(f"{c}_NOW" for c in actions).alias("ACTIONS_ALL_TIME"),
        ((snap - pl.col("_last_NOW")).dt.total_microseconds() / days).alias("DAYS_SINCE_LAST_USAGE"),
        ((snap - pl.col("_first_NOW")).dt.total_microseconds() / days).alias("DAYS_SINCE_FIRST_USAGE"),
        snap.dt.month().cast(pl.Int8).alias("SNAPSHOT_MONTH"),
        (quarter_end.cast(TS) - snap).dt.total_days().cast(pl.Int16).alias("DAYS_TO_QUARTER_END"),
    ).join(companies.lazy().select("ID", "ALEXA_RANK", "EMPLOYEE_RANGE", "INDUSTRY"), on="ID", how="left")
    levels = list(spec.industries)
    feats = feats.with_columns(
        pl.col("ALEXA_RANK").cast(pl.Float64).log10().alias("LOG10_ALEXA_RANK"),
        pl.col("EMPLOYEE_RANGE")
        .cast(pl.String)
        .cast(pl.Enum(list(EMPLOYEE_RANGES)))
        .to_physical()
        .alias("EMPLOYEE_RANGE_ORD"),
        pl.when(industry.is_in(levels)).then(industry).otherwise(pl.lit(OTHER)).alias("INDUSTRY_GROUP"),
    ).with_columns(
        pl.when(industry.is_null()).then(None).otherwise(pl.col("INDUSTRY_GROUP")).alias("INDUSTRY_GROUP")
    )
    dtypes = feature_dtypes(spec)
    feats = feats.with_columns(pl.col(n).cast(d) for n, d in dtypes.items())
    extra = [c for c in rows.columns if c not in KEY]
    keep_slices = [c for c in ("INDUSTRY", "EMPLOYEE_RANGE") if c not in extra]  # raw, for slicing
    return feats.select(*KEY, *extra, *keep_slices, *feature_names(spec)).sort(*KEY).collect()
