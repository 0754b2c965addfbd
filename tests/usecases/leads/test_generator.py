"""Synthetic lead-conversion generator: determinism, file contract, truth that matches the labels."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import polars as pl
import pytest

from clinrisk.usecases.leads import features as F
from clinrisk.usecases.leads.config import LeadsGenerateConfig, LeadsParams
from clinrisk.usecases.leads.generator import LeadsData, generate_to_dir, simulate
from clinrisk.usecases.leads.ingest import read_export, validate_tables
from clinrisk.usecases.leads.tables import CONTRACTS, CUSTOMERS_FILE, NONCUSTOMERS_FILE, USAGE_FILE
from clinrisk.usecases.leads.truth import snapshot_truth

from .conftest import SMALL, SMALL_FEATURES


def _hash(data: LeadsData) -> list[int]:
    return [int(f.hash_rows().sum()) for f in (data.customers, data.noncustomers, data.usage, data.hazard)]


def test_same_seed_same_data_other_seed_other_data(leads_data: LeadsData) -> None:
    assert _hash(simulate(SMALL, seed=3)) == _hash(leads_data)
    assert _hash(simulate(SMALL, seed=4)) != _hash(leads_data)


def test_shards_are_independent_and_ids_disjoint() -> None:
    a = simulate(SMALL, seed=3, shard=0, n_companies=100, first_id=1)
    b = simulate(SMALL, seed=3, shard=1, n_companies=100, first_id=101)
    ids_a = set(pl.concat([a.customers["ID"], a.noncustomers["ID"]]).to_list())
    ids_b = set(pl.concat([b.customers["ID"], b.noncustomers["ID"]]).to_list())
    assert ids_a == set(range(1, 101)) and ids_b == set(range(101, 201))
    assert _hash(simulate(SMALL, seed=3, shard=1, n_companies=100, first_id=101)) == _hash(b)


def test_frames_match_the_file_contract(leads_data: LeadsData) -> None:
    for file, frame in (
        (CUSTOMERS_FILE, leads_data.customers),
        (NONCUSTOMERS_FILE, leads_data.noncustomers),
        (USAGE_FILE, leads_data.usage),
    ):
        assert frame.columns == list(CONTRACTS[file])
    assert leads_data.customers.height > 20 and leads_data.noncustomers.height > 20
    assert (
        leads_data.usage.select(pl.all().exclude("ID", "WHEN_TIMESTAMP").min()).min_horizontal().item() >= 0
    )


def test_csv_round_trip_through_ingestion_is_lossless(export_dir: Path, leads_data: LeadsData) -> None:
    tables = validate_tables(read_export(export_dir), max_quarantine_fraction=0.0)
    assert tables.customers.with_columns(pl.col("EMPLOYEE_RANGE").cast(pl.String)).equals(
        leads_data.customers.sort("ID")
    )
    assert tables.noncustomers.with_columns(pl.col("EMPLOYEE_RANGE").cast(pl.String)).equals(
        leads_data.noncustomers.sort("ID")
    )
    assert tables.usage.equals(leads_data.usage.sort("ID", "WHEN_TIMESTAMP"))


def test_generate_to_dir_is_byte_identical(tmp_path: Path) -> None:
    cfg = LeadsGenerateConfig(n_companies=50, n_weeks=20, signup_weeks=10)
    generate_to_dir(cfg, 5, tmp_path / "a")
    generate_to_dir(cfg, 5, tmp_path / "b")
    for f in (CUSTOMERS_FILE, NONCUSTOMERS_FILE, USAGE_FILE, "truth/weekly_hazard.parquet", "manifest.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_paying_customers_use_more_after_conversion() -> None:
    """The boost changes only usage stamped after the conversion week; there, it raises it."""
    plain = simulate(SMALL.model_copy(update={"post_conversion_usage_boost": 1.0}), seed=3)
    boosted = simulate(SMALL.model_copy(update={"post_conversion_usage_boost": 3.0}), seed=3)
    assert plain.customers["CLOSEDATE"].equals(boosted.customers["CLOSEDATE"])
    close = plain.customers.select("ID", "CLOSEDATE")

    def split(d: LeadsData) -> tuple[pl.DataFrame, pl.DataFrame]:
        u = d.usage.join(close, on="ID", how="left")
        # the row of the conversion week itself is stamped at most 7 days after CLOSEDATE
        before = pl.col("CLOSEDATE").is_null() | (
            pl.col("WHEN_TIMESTAMP") <= pl.col("CLOSEDATE") + pl.duration(days=6)
        )
        return u.filter(before).drop("CLOSEDATE"), u.filter(~before).drop("CLOSEDATE")

    (pb, pa), (bb, ba) = split(plain), split(boosted)
    assert pb.equals(bb)
    assert ba["ACTIONS_CRM_CONTACTS"].mean() > 2 * pa["ACTIONS_CRM_CONTACTS"].mean()  # type: ignore[operator]


def test_truth_is_the_probability_of_the_label() -> None:
    """Mean true probability equals the observed conversion rate within sampling error (4 SE)."""
    data_cfg = LeadsGenerateConfig(n_companies=3000, n_weeks=40, signup_weeks=20, base_weekly_hazard=0.01)
    data = simulate(data_cfg, 9)
    comp = F.companies_frame(data.customers, data.noncustomers)
    params = LeadsParams(generate=data_cfg, features=SMALL_FEATURES)
    rows = F.label_rows(
        F.prediction_rows(comp, data.usage, F.snapshot_grid(*params.grid(), SMALL_FEATURES)), comp, 28
    )
    truth = snapshot_truth(rows.lazy(), data.hazard.lazy(), 28, dt.datetime(2019, 1, 7)).collect()
    p = truth["P_TRUE"].to_numpy()
    se = math.sqrt(float((p * (1 - p)).sum())) / p.size
    assert truth["P_TRUE"].null_count() == 0 and p.min() > 0 and p.max() < 1
    assert abs(truth["LABEL"].mean() - p.mean()) < 4 * se  # type: ignore[operator]


def test_truth_rejects_snapshots_off_the_weekly_grid(leads_data: LeadsData) -> None:
    from clinrisk.errors import DataError

    rows = pl.LazyFrame({"ID": [1], "SNAPSHOT": [dt.datetime(2019, 3, 5)]})
    with pytest.raises(DataError, match="weekly grid"):
        snapshot_truth(rows, leads_data.hazard.lazy(), 28, dt.datetime(2019, 1, 7)).collect()


def test_truth_by_hand_for_a_partial_last_week() -> None:
    """horizon 10 days = one full week + 3/7 of the next: 1 - (1 - 0.1)(1 - 0.2 * 3/7)."""
    origin = dt.datetime(2020, 1, 6)
    hazard = pl.LazyFrame(
        {
            "ID": [1, 1, 1],
            "WEEK_START": [origin, origin + dt.timedelta(days=7), origin + dt.timedelta(days=14)],
            "HAZARD": [0.1, 0.2, 0.9],
        }
    )
    rows = pl.LazyFrame({"ID": [1, 2], "SNAPSHOT": [origin, origin]})
    out = snapshot_truth(rows, hazard, 10, origin).collect().sort("ID")
    assert out["P_TRUE"][0] == pytest.approx(1 - 0.9 * (1 - 0.2 * 3 / 7))
    assert out["P_TRUE"][1] == 0.0
