"""Company-grouped temporal split, and lift/gains at top-k against labels and truth."""

from __future__ import annotations

import datetime as dt
import math

import polars as pl
import pytest

from clinrisk.config import SplitConfig
from clinrisk.usecases.leads.config import LeadsSplitConfig
from clinrisk.usecases.leads.evaluate import evaluate_leads, slice_table, top_k_table
from clinrisk.usecases.leads.splits import assign_split, first_test_snapshot


def _rows(n_ids: int = 400, n_snaps: int = 20) -> pl.DataFrame:
    s0 = dt.datetime(2020, 1, 6)
    return pl.DataFrame(
        {
            "ID": [i for i in range(n_ids) for _ in range(n_snaps)],
            "SNAPSHOT": [s0 + dt.timedelta(days=14 * k) for _ in range(n_ids) for k in range(n_snaps)],
        },
        schema={"ID": pl.Int64, "SNAPSHOT": pl.Datetime("us")},
    )


def test_split_is_company_disjoint_and_labels_close_before_the_test_period() -> None:
    rows = _rows()
    t0 = first_test_snapshot(LeadsSplitConfig(), rows["SNAPSHOT"].unique().to_list())
    out = assign_split(rows.lazy(), SplitConfig(), t0, horizon_days=28).collect()
    ids = {s: set(out.filter(pl.col("split") == s)["ID"]) for s in ("train", "validation", "test")}
    assert ids["train"] and ids["validation"] and ids["test"]
    assert (
        not (ids["train"] & ids["test"])
        and not (ids["validation"] & ids["test"])
        and not (ids["train"] & ids["validation"])
    )
    fit = out.filter(pl.col("split").is_in(["train", "validation"]))
    assert (fit["SNAPSHOT"] + dt.timedelta(days=28) <= t0).all()
    assert (out.filter(pl.col("split") == "test")["SNAPSHOT"] >= t0).all()
    # the one snapshot whose label window straddles the test start (28-day window, 14-day cadence) is embargoed
    assert out.filter(pl.col("split") == "embargo")["SNAPSHOT"].unique().to_list() == [
        t0 - dt.timedelta(days=14)
    ]


def test_test_start_defaults_to_the_last_fraction_and_honours_an_explicit_date() -> None:
    snaps = [dt.datetime(2020, 1, 1) + dt.timedelta(days=7 * k) for k in range(10)]
    assert first_test_snapshot(LeadsSplitConfig(test_fraction=0.3), snaps) == snaps[7]
    assert first_test_snapshot(LeadsSplitConfig(test_from=dt.date(2020, 2, 1)), snaps) == dt.datetime(
        2020, 2, 1
    )


def _scored() -> pl.DataFrame:
    # two snapshots of 10 leads; score ranks leads 0..9, labels and truth hand-picked
    return pl.DataFrame(
        {
            "ID": list(range(10)) * 2,
            "SNAPSHOT": [1] * 10 + [2] * 10,
            "score": [0.9 - 0.1 * i for i in range(10)] * 2,
            "LABEL": [1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            "P_TRUE": [0.5, 0.1, 0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.6] * 2,
        }
    )


def test_top_k_lift_gains_and_oracle_capture_by_hand() -> None:
    (r20,) = top_k_table(_scored(), [0.2])
    # top 2 of each snapshot: leads 0, 1 -> conversions 1 (snapshot 1) + 0 (snapshot 2)
    assert r20["leads_worked"] == 4 and r20["conversions"] == 1
    assert r20["precision"] == pytest.approx(0.25)
    assert r20["lift"] == pytest.approx(0.25 / (4 / 20))
    assert r20["gains"] == pytest.approx(1 / 4)
    assert r20["expected_conversions"] == pytest.approx(2 * (0.5 + 0.1))
    assert r20["oracle_expected_conversions"] == pytest.approx(2 * (0.6 + 0.5))
    assert r20["capture_vs_oracle"] == pytest.approx(0.6 / 1.1)
    (r100,) = top_k_table(_scored(), [1.0])
    assert (
        r100["gains"] == 1.0
        and r100["lift"] == pytest.approx(1.0)
        and r100["capture_vs_oracle"] == pytest.approx(1.0)
    )


def test_top_k_ties_are_broken_by_id_so_lists_are_deterministic() -> None:
    df = _scored().with_columns(pl.lit(0.5).alias("score"))
    a = top_k_table(df, [0.1])
    b = top_k_table(df.reverse(), [0.1])
    assert a == b and a[0]["conversions"] == 1  # lead 0 of snapshot 1 converted


def test_at_least_one_lead_is_worked_and_truth_is_optional() -> None:
    (r,) = top_k_table(_scored().drop("P_TRUE"), [0.001], truth="P_TRUE")
    assert r["leads_worked"] == 2 and "capture_vs_oracle" not in r


def test_slices_and_headline() -> None:
    df = _scored().with_columns(pl.Series("INDUSTRY", ["a", None] * 10))
    sl = slice_table(df, "INDUSTRY", min_rows=5)
    assert [s["level"] for s in sl] == ["(missing)", "a"] and sum(s["rows"] for s in sl) == 20
    small = slice_table(df, "INDUSTRY", min_rows=50)
    assert all(math.isnan(s["auc"]) for s in small)
    res = evaluate_leads(df, [0.1, 0.5], ["INDUSTRY", "NOT_A_COLUMN"], min_slice_rows=5)
    assert res["rows"] == 20 and res["snapshots"] == 2 and len(res["top_k"]) == 2 and len(res["slices"]) == 2
    assert res["base_rate"] == pytest.approx(0.2) and 0 <= res["auc"] <= 1
    assert res["expected_auc_oracle"] >= res["expected_auc_model"] - 1e-12
