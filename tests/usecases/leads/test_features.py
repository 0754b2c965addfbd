"""Point-in-time correctness of lead-conversion features and labels."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import polars as pl
import pytest

from clinrisk.errors import DataError
from clinrisk.feature_table import OTHER
from clinrisk.usecases.leads import features as F
from clinrisk.usecases.leads.generator import LeadsData
from clinrisk.usecases.leads.tables import USAGE_COLUMNS

from .conftest import SMALL_FEATURES, SMALL_PARAMS


def _table(data: LeadsData, usage: pl.DataFrame | None = None) -> tuple[pl.DataFrame, F.LeadsFeatureSpec]:
    usage = data.usage if usage is None else usage
    comp = F.companies_frame(data.customers, data.noncustomers)
    grid = F.snapshot_grid(*SMALL_PARAMS.grid(), SMALL_FEATURES)
    rows = F.label_rows(F.prediction_rows(comp, data.usage, grid), comp, SMALL_FEATURES.horizon_days)
    spec = F.fit_feature_spec(comp, SMALL_FEATURES)
    return F.build_features(rows, comp, usage, spec), spec


@pytest.fixture(scope="module")
def table(leads_data: LeadsData) -> pl.DataFrame:
    return _table(leads_data)[0]


def _perturb(usage: pl.DataFrame, mask: pl.Expr, seed: int = 0) -> pl.DataFrame:
    """Replace every usage count of the rows selected by ``mask`` with large random numbers."""
    rng = np.random.default_rng(seed)
    noise = {c: pl.Series(rng.integers(1000, 100000, usage.height)) for c in USAGE_COLUMNS}
    return usage.with_columns(
        pl.when(mask).then(noise[c]).otherwise(pl.col(c)).alias(c) for c in USAGE_COLUMNS
    )


def test_usage_on_or_after_a_snapshot_never_changes_its_features(
    leads_data: LeadsData, table: pl.DataFrame
) -> None:
    snaps = table["SNAPSHOT"].unique().sort()
    s = snaps[len(snaps) // 2]
    future = _perturb(leads_data.usage, pl.col("WHEN_TIMESTAMP") >= s)
    # and a row stamped exactly at the snapshot for every company: strictly-before excludes it
    at_s = (
        leads_data.usage.group_by("ID").agg(pl.all().first()).with_columns(pl.lit(s).alias("WHEN_TIMESTAMP"))
    )
    future = pl.concat([future, at_s.select(future.columns)])
    perturbed, _ = _table(leads_data, future)
    before = table.filter(pl.col("SNAPSHOT") <= s)
    assert perturbed.filter(pl.col("SNAPSHOT") <= s).equals(before)
    # the perturbation is visible later, so the check above can fail
    assert not perturbed.filter(pl.col("SNAPSHOT") > s).equals(table.filter(pl.col("SNAPSHOT") > s))


def test_usage_after_closedate_never_reaches_any_feature(leads_data: LeadsData, table: pl.DataFrame) -> None:
    close = leads_data.customers.select("ID", "CLOSEDATE")
    usage = leads_data.usage.join(close, on="ID", how="left")
    perturbed_usage = _perturb(usage, pl.col("WHEN_TIMESTAMP") >= pl.col("CLOSEDATE")).drop("CLOSEDATE")
    assert not perturbed_usage.equals(leads_data.usage)
    perturbed, _ = _table(leads_data, perturbed_usage)
    assert perturbed.equals(table)


def test_no_prediction_row_at_or_after_conversion_or_before_first_usage(
    leads_data: LeadsData, table: pl.DataFrame
) -> None:
    rows = table.join(leads_data.customers.select("ID", "CLOSEDATE"), on="ID", how="left")
    assert rows.filter(pl.col("CLOSEDATE") <= pl.col("SNAPSHOT")).height == 0
    first = leads_data.usage.group_by("ID").agg(pl.col("WHEN_TIMESTAMP").min().alias("first"))
    assert table.join(first, on="ID").filter(pl.col("first") >= pl.col("SNAPSHOT")).height == 0
    # every converted company with usage before its conversion has a positive row
    positives = set(table.filter(pl.col("LABEL") == 1)["ID"].to_list())
    assert len(positives) > 10


def test_labels_by_hand() -> None:
    s = dt.datetime(2020, 3, 2)
    comp = pl.DataFrame(
        {
            "ID": [1, 2, 3, 4],
            "CLOSEDATE": [s, s + dt.timedelta(days=1), s + dt.timedelta(days=28), s + dt.timedelta(days=29)],
        },
        schema={"ID": pl.Int64, "CLOSEDATE": pl.Datetime("us")},
    )
    rows = pl.DataFrame(
        {"ID": [1, 2, 3, 4], "SNAPSHOT": [s] * 4}, schema={"ID": pl.Int64, "SNAPSHOT": pl.Datetime("us")}
    )
    assert F.label_rows(rows, comp, 28)["LABEL"].to_list() == [0, 1, 1, 0]


def test_window_sums_equal_a_brute_force_scan(leads_data: LeadsData, table: pl.DataFrame) -> None:
    sample = table.sample(40, seed=1)
    usage = leads_data.usage
    for row in sample.iter_rows(named=True):
        mine = usage.filter((pl.col("ID") == row["ID"]) & (pl.col("WHEN_TIMESTAMP") < row["SNAPSHOT"]))
        for w in SMALL_FEATURES.windows_days:
            win = mine.filter(pl.col("WHEN_TIMESTAMP") >= row["SNAPSHOT"] - dt.timedelta(days=w))
            assert row[f"ACTIVE_WEEKS_{w}D"] == win.height
            for c in USAGE_COLUMNS:
                assert row[f"{c}_{w}D"] == win[c].sum(), (row["ID"], row["SNAPSHOT"], c, w)
        last = mine["WHEN_TIMESTAMP"].max()
        assert row["DAYS_SINCE_LAST_USAGE"] == (row["SNAPSHOT"] - last).total_seconds() / 86400


def test_snapshot_grid_leaves_room_for_the_label_window(leads_data: LeadsData) -> None:
    first, end = SMALL_PARAMS.grid()
    assert end == F.data_end(leads_data.usage)  # the generator's last row is stamped at the end of its data
    grid = F.snapshot_grid(first, end, SMALL_FEATURES)
    assert grid[0] == first
    assert grid[-1] + dt.timedelta(days=SMALL_FEATURES.horizon_days) <= end
    assert grid[-1] + dt.timedelta(days=SMALL_FEATURES.horizon_days + SMALL_FEATURES.cadence_days) > end
    assert all(b - a == dt.timedelta(days=SMALL_FEATURES.cadence_days) for a, b in itertools.pairwise(grid))
    with pytest.raises(DataError, match="too short"):
        F.snapshot_grid(first, grid[0], SMALL_FEATURES)


def test_industry_groups_come_from_the_frozen_spec(leads_data: LeadsData, table: pl.DataFrame) -> None:
    _, spec = _table(leads_data)
    grouped = table.select(pl.col("INDUSTRY"), pl.col("INDUSTRY_GROUP").cast(pl.String))
    known = grouped.filter(pl.col("INDUSTRY").is_in(list(spec.industries)))
    assert (known["INDUSTRY"] == known["INDUSTRY_GROUP"]).all()
    other = grouped.filter(
        pl.col("INDUSTRY").is_not_null() & ~pl.col("INDUSTRY").is_in(list(spec.industries))
    )
    assert other.height > 0 and (other["INDUSTRY_GROUP"] == OTHER).all()
    assert (
        grouped.filter(pl.col("INDUSTRY").is_null())["INDUSTRY_GROUP"].null_count()
        == table["INDUSTRY"].null_count()
    )


def test_feature_dtypes_are_the_declared_ones(leads_data: LeadsData, table: pl.DataFrame) -> None:
    _, spec = _table(leads_data)
    assert {n: table.schema[n] for n in F.feature_names(spec)} == F.feature_dtypes(spec)


def test_duplicate_prediction_rows_are_refused(leads_data: LeadsData) -> None:
    comp = F.companies_frame(leads_data.customers, leads_data.noncustomers)
    rows = pl.DataFrame(
        {"ID": [1, 1], "SNAPSHOT": [dt.datetime(2019, 6, 3)] * 2},
        schema={"ID": pl.Int64, "SNAPSHOT": pl.Datetime("us")},
    )
    with pytest.raises(DataError, match="duplicate"):
        F.build_features(rows, comp, leads_data.usage, F.fit_feature_spec(comp, SMALL_FEATURES))
