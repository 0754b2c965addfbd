"""Raw validation: schema on clean data, every injected corruption quarantined with its check, atomic output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from clinrisk.config import load_config
from clinrisk.errors import DataError
from clinrisk.io import shard_file
from clinrisk.schemas import HARD_RANGES, OBSERVED_SCHEMA, raw_rules, raw_schema
from clinrisk.validate import (
    MEASUREMENT_COLUMNS,
    QUARANTINE_COLUMNS,
    validate_dataset,
    validate_frame,
    validate_shard,
)
from tests.data.validate_fixtures import FIRST_YEAR, LAST_YEAR, clean_frame, write_raw


def _set(df: pl.DataFrame, row: int, col: str, value: object, dtype: Any = None) -> pl.DataFrame:
    """Copy of ``df`` with one cell replaced (column cast to ``dtype`` first when given)."""
    target = dtype or df.schema[col]
    s = df.get_column(col).cast(target).to_list()
    s[row] = value
    return df.with_columns(pl.Series(col, s, dtype=target))


def _validate(df: pl.DataFrame):  # type: ignore[no-untyped-def]
    return validate_frame(df, FIRST_YEAR, LAST_YEAR, where="fixture.parquet")


def _cfg(*extra: str):  # type: ignore[no-untyped-def]
    return load_config(None, [f"generate.first_year={FIRST_YEAR}", f"generate.last_year={LAST_YEAR}", *extra])


def _published(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


# --- schema on clean data -------------------------------------------------------------------------------


def test_clean_frame_passes_schema_and_validation() -> None:
    df = clean_frame()
    raw_schema(FIRST_YEAR, LAST_YEAR).validate(df, lazy=True)  # raises on any failure
    res = _validate(df)
    assert res.stats["rows_in"] == res.stats["rows_valid"] == df.height
    assert res.quarantine.height == 0
    assert res.valid.schema == pl.Schema(OBSERVED_SCHEMA)
    assert res.valid.equals(df)


def test_every_value_column_has_per_unit_and_null_unit_rules() -> None:
    rules = {(r.column, r.name) for r in raw_rules(FIRST_YEAR, LAST_YEAR)}
    for vr in HARD_RANGES:
        for unit in vr.ranges:
            assert (vr.value_col, f"hard_range[{unit}]") in rules
        if vr.unit_col is not None:
            assert (vr.value_col, "hard_range[unit=null]") in rules


# --- injected corruptions --------------------------------------------------------------------------------

CORRUPTIONS = [
    # (id, mutate, expected check, expected column, text expected in the reason)
    (
        "dtype_float",
        lambda d: _set(d, 3, "sbp_mmhg", "abc", pl.String),
        "dtype",
        "sbp_mmhg",
        "cannot cast 'abc' to Float32",
    ),
    (
        "dtype_int_lossy",
        lambda d: _set(d, 3, "visits", 1.5, pl.Float64),
        "dtype",
        "visits",
        "cannot cast '1.5' to UInt8",
    ),
    ("dtype_negative_visits", lambda d: _set(d, 3, "visits", -2, pl.Int64), "dtype", "visits", "'-2'"),
    (
        "glucose_mgdl_negative",
        lambda d: _set(
            d.with_columns(glucose_unit=pl.lit("mg/dL").cast(d.schema["glucose_unit"])),
            3,
            "glucose_value",
            -5.0,
        ),
        "hard_range[mg/dL]",
        "glucose_value",
        "(0, 5000]",
    ),
    (
        "glucose_mmoll_impossible",
        lambda d: _set(
            d.with_columns(glucose_unit=pl.lit("mmol/L").cast(d.schema["glucose_unit"])),
            3,
            "glucose_value",
            900.0,
        ),
        "hard_range[mmol/L]",
        "glucose_value",
        "(0, 277.5]",
    ),
    (
        "height_in_impossible",
        lambda d: _set(_set(d, 3, "height_unit", "in"), 3, "height_value", 175.0),
        "hard_range[in]",
        "height_value",
        "labelled in",
    ),
    (
        "null_unit_hull",
        lambda d: _set(_set(d, 3, "tg_unit", None), 3, "tg_value", 50_000.0),
        "hard_range[unit=null]",
        "tg_value",
        "hull",
    ),
    ("nan_value", lambda d: _set(d, 3, "sbp_mmhg", float("nan")), "hard_range[mmHg]", "sbp_mmhg", "NaN"),
    (
        "unknown_unit",
        lambda d: _set(d, 3, "glucose_unit", "mg/l", pl.String),
        "isin",
        "glucose_unit",
        "unknown value 'mg/l'",
    ),
    (
        "unknown_region",
        lambda d: _set(d, 3, "region", "Mars", pl.String),
        "isin",
        "region",
        "unknown value 'Mars'",
    ),
    (
        "unknown_sex_categorical",
        lambda d: _set(d, 3, "sex", "U", pl.Categorical()),
        "isin",
        "sex",
        "unknown value 'U'",
    ),
    ("year_outside_calendar", lambda d: _set(d, 3, "year", 2030), "calendar", "year", "2000..2023"),
    (
        "birth_year_implausible",
        lambda d: _set(d, 3, "birth_year", 1700),
        "age_range",
        "birth_year,year",
        "[0, 120]",
    ),
    (
        "entry_after_year",
        lambda d: _set(d, 3, "entry_year", 2022),
        "entry_order",
        "entry_year,birth_year,year",
        "entry_year",
    ),
    (
        "null_in_required",
        lambda d: _set(d, 3, "family_history", None),
        "not_nullable",
        "family_history",
        "must not be null",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "check", "column", "text"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS]
)
def test_corruption_is_quarantined_with_reason(mutate, check: str, column: str, text: str) -> None:  # type: ignore[no-untyped-def]
    df = mutate(clean_frame())
    res = _validate(df)
    assert res.stats["rows_in"] == df.height == res.stats["rows_valid"] + res.stats["rows_quarantined"]
    if column in MEASUREMENT_COLUMNS:
        # value level: the row stays, only this measurement and its unit are nulled and recorded
        assert res.quarantine.height == 0 and res.valid.height == df.height
        assert res.values.height == 1 and res.stats["values_quarantined"] == 1
        v = res.values.row(0, named=True)
        assert (v["_check"], v["_column"]) == (check, column)
        assert text in v["_reason"]
        assert v["patient_id"] == df["patient_id"][3] and v["year"] == df["year"][3]
        kept = res.valid.filter(
            (pl.col("patient_id") == v["patient_id"]) & (pl.col("year") == v["year"])
        ).row(0, named=True)
        for col in MEASUREMENT_COLUMNS[column]:
            assert kept[col] is None
        return
    assert res.quarantine.height == 1
    q = res.quarantine.row(0, named=True)
    assert q["_row"] == 3
    assert q["_check"] == check
    assert q["_column"] == column
    assert text in q["_reason"] and check in q["_reason"]
    assert res.valid.schema == pl.Schema(OBSERVED_SCHEMA)
    assert res.quarantine.columns == [*QUARANTINE_COLUMNS[:1], *OBSERVED_SCHEMA, *QUARANTINE_COLUMNS[1:]]
    assert {"_check": check, "_column": column, "rows": 1} in res.stats["failures"]


def test_same_value_passes_in_its_plausible_unit() -> None:
    # 900 is impossible as mmol/L glucose but fine as mg/dL: the range is per labelled unit.
    df = clean_frame().with_columns(glucose_unit=pl.lit("mg/dL").cast(OBSERVED_SCHEMA["glucose_unit"]))
    assert _validate(_set(df, 3, "glucose_value", 900.0)).quarantine.height == 0
    # a "%" HbA1c mislabelled mmol/mol (science §1.8 fault) is for the units layer, not a hard failure
    df = clean_frame().with_columns(hba1c_unit=pl.lit("mmol/mol").cast(OBSERVED_SCHEMA["hba1c_unit"]))
    assert _validate(_set(df, 3, "hba1c_value", 5.7)).quarantine.height == 0


def test_several_failures_on_one_row_are_joined() -> None:
    df = _set(_set(clean_frame(), 5, "sbp_mmhg", 1000.0), 5, "region", "XX", pl.String)
    res = _validate(df)
    assert res.quarantine.height == 1
    q = res.quarantine.row(0, named=True)
    assert q["_check"].split("; ") == ["isin", "hard_range[mmHg]"]
    assert q["_column"].split("; ") == ["region", "sbp_mmhg"]
    assert "sbp_mmhg=1000.0" in q["_reason"] and "'XX'" in q["_reason"]


def test_duplicates_exact_copy_keeps_first_conflict_quarantines_all() -> None:
    df = clean_frame(n_patients=5, years=3)
    copy = df.slice(4, 1)
    conflict = _set(df.slice(7, 1), 0, "visits", 9)
    res = _validate(pl.concat([df, copy, conflict]))
    q = res.quarantine
    assert q.get_column("_row").to_list() == [7, df.height, df.height + 1]
    assert q.get_column("_check").to_list() == ["duplicate_conflict", "duplicate_copy", "duplicate_conflict"]
    assert set(q.get_column("_column")) == {"patient_id,year"}
    # the first exact copy is kept, and the valid rows are unique, sorted by (patient_id, year)
    assert res.valid.height == df.height - 1
    assert res.valid.select(pl.struct("patient_id", "year").is_duplicated().any()).item() is False
    assert res.valid.equals(res.valid.sort("patient_id", "year"))


def test_unsorted_input_is_sorted_and_flagged() -> None:
    df = clean_frame()
    res = _validate(df.reverse())
    assert res.stats["input_sorted"] is False
    assert res.valid.equals(df)
    assert _validate(df).stats["input_sorted"] is True


def test_extra_column_dropped_and_reported() -> None:
    res = _validate(clean_frame().with_columns(notes=pl.lit("x")))
    assert res.stats["extra_columns_dropped"] == ["notes"]
    assert "notes" not in res.valid.columns


def test_missing_column_is_an_error_naming_file_and_column() -> None:
    with pytest.raises(DataError, match=r"fixture\.parquet.*tg_unit"):
        _validate(clean_frame().drop("tg_unit"))


def test_uncastable_column_is_an_error_naming_file_and_column() -> None:
    df = clean_frame().with_columns(ldl_value=pl.lit("high"))
    with pytest.raises(DataError, match=r"fixture\.parquet.*'ldl_value'.*Float32"):
        _validate(df)
    df = clean_frame().with_columns(visits=pl.lit([1, 2]))  # list column: no cast path at all
    with pytest.raises(DataError, match=r"'visits'"):
        _validate(df)


# --- files, dataset, atomic publication ------------------------------------------------------------------


def test_bad_lab_unit_keeps_the_diagnosis_row_and_other_values() -> None:
    """A bad lab unit nulls that lab only: the patient-year, its diagnosis codes and other values stay."""
    df = clean_frame().with_columns(dx_E11=pl.lit(False))
    df = _set(_set(df, 3, "dx_E11", True), 3, "glucose_unit", "mg/l", pl.String)
    res = _validate(df)
    assert res.quarantine.height == 0 and res.valid.height == df.height
    row = res.valid.with_row_index("_i").filter(
        (pl.col("patient_id") == df["patient_id"][3]) & (pl.col("year") == df["year"][3])
    )
    before = validate_frame(clean_frame(), FIRST_YEAR, LAST_YEAR).valid.row(3, named=True)
    got = row.drop("_i").row(0, named=True)
    assert got["dx_E11"] is True
    assert got["glucose_value"] is None and got["glucose_unit"] is None
    for col in ("hba1c_value", "hba1c_unit", "sbp_mmhg", "ldl_value", "weight_value", "visits"):
        assert got[col] == before[col], col
    v = res.values.to_dicts()
    assert len(v) == 1 and v[0]["_column"] == "glucose_unit" and v[0]["_value"] == "mg/l"
    assert "unknown value 'mg/l'" in v[0]["_reason"]
    assert res.stats["quarantined_values"] == v


def test_value_and_row_failures_on_one_row_quarantine_the_row() -> None:
    df = _set(_set(clean_frame(), 5, "glucose_unit", "mg/l", pl.String), 5, "region", "XX", pl.String)
    res = _validate(df)
    assert res.quarantine.height == 1 and res.values.height == 0
    assert sorted(res.quarantine.row(0, named=True)["_column"].split("; ")) == ["glucose_unit", "region"]


def test_validate_dataset_layout_counts_and_report(tmp_path: Path) -> None:
    a = _set(clean_frame(10, 4, first_pid=0), 2, "region", "Mars", pl.String)
    b = _set(clean_frame(10, 4, first_pid=100, seed=1), 5, "birth_year", 1700)
    b = _set(b, 6, "sbp_mmhg", 999.0)  # value level: row kept
    raw = write_raw(tmp_path / "raw", [a, b])
    out = tmp_path / "run"
    report = validate_dataset(_cfg(), raw, out, workers=1)

    assert _published(out) == ["quarantine", "validated", "validation"]
    assert report["rows_in"] == 80 == report["rows_valid"] + report["rows_quarantined"]
    assert report["rows_quarantined"] == 2
    assert [s["rows_in"] for s in report["shards"]] == [40, 40]
    for s in report["shards"]:
        assert s["rows_in"] == s["rows_valid"] + s["rows_quarantined"]
    checks = {(f["check"], f["column"]): f["rows"] for f in report["failures_by_check"]}
    assert checks == {("isin", "region"): 1, ("age_range", "birth_year,year"): 1}
    assert report["values_quarantined"] == 1
    assert [v["_column"] for v in report["quarantined_values"]] == ["sbp_mmhg"]
    assert report["raw_manifest"]["content_hash"] == "fixture-hash"
    assert len(report["validated_content_hash"]) == 64

    for i in range(2):
        v = pl.read_parquet(shard_file(out / "validated", i))
        q = pl.read_parquet(shard_file(out / "quarantine", i))
        assert v.schema == pl.Schema(OBSERVED_SCHEMA)
        assert v.equals(v.sort("patient_id", "year"))
        assert v.height + q.height == 40 and q.height == 1
    assert json.loads((out / "validation" / "report.json").read_text()) == json.loads(json.dumps(report))
    md = (out / "validation" / "report.md").read_text()
    assert "rows quarantined: **2**" in md and "| isin | region | 1 |" in md
    assert "values quarantined (row kept, value and unit nulled): **1**" in md
    assert report["validated_content_hash"] in md

    again = validate_dataset(_cfg(), raw, tmp_path / "run2", workers=1)
    assert again["validated_content_hash"] == report["validated_content_hash"]


def test_workers_give_identical_output(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", [clean_frame(8, 3, first_pid=k * 100, seed=k) for k in range(3)])
    one = validate_dataset(_cfg(), raw, tmp_path / "w1", workers=1)
    two = validate_dataset(_cfg(), raw, tmp_path / "w2", workers=2)
    assert one["validated_content_hash"] == two["validated_content_hash"]


def _assert_nothing_published(out: Path) -> None:
    assert _published(out) == [], f"partial output left in {out}: {_published(out)}"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_shard_fails_naming_file_and_publishes_nothing(tmp_path: Path, damage: str) -> None:
    raw = write_raw(tmp_path / "raw", [clean_frame(5, 3), clean_frame(5, 3, first_pid=50)])
    f = shard_file(raw / "observed", 1)
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not parquet" * 100, "empty": b""}[damage])
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"shard=001/part\.parquet"):
        validate_dataset(_cfg(), raw, out, workers=1)
    _assert_nothing_published(out)
    with pytest.raises(DataError, match=r"shard=001/part\.parquet"):
        validate_shard(f, FIRST_YEAR, LAST_YEAR)


def test_missing_shard_file_or_dir_fails(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", [clean_frame(5, 3), clean_frame(5, 3, first_pid=50)])
    f = shard_file(raw / "observed", 1)
    f.unlink()
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"shard=001/part\.parquet.*missing"):
        validate_dataset(_cfg(), raw, out, workers=1)
    f.parent.rmdir()  # whole shard directory gone: the manifest still promises it
    with pytest.raises(DataError, match=r"missing: \['shard=001'\]"):
        validate_dataset(_cfg(), raw, out, workers=1)
    _assert_nothing_published(out)


def test_row_count_must_match_manifest(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", [clean_frame(5, 3)], manifest={"n_shards": 1, "n_rows": 99})
    with pytest.raises(DataError, match="99"):
        validate_dataset(_cfg(), raw, tmp_path / "run", workers=1)
    _assert_nothing_published(tmp_path / "run")


def test_missing_manifest_fails(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", [clean_frame(5, 3)])
    (raw / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json"):
        validate_dataset(_cfg(), raw, tmp_path / "run", workers=1)


def test_quarantine_fraction_limit_fails_and_keeps_previous_output(tmp_path: Path) -> None:
    good = write_raw(tmp_path / "good", [clean_frame(5, 4)])
    out = tmp_path / "run"
    first = validate_dataset(_cfg(), good, out, workers=1)
    bad = clean_frame(5, 4).with_columns(
        sbp_mmhg=pl.when(pl.int_range(pl.len()) < 3).then(pl.lit(5000.0)).otherwise(pl.col("sbp_mmhg"))
    )
    raw = write_raw(tmp_path / "bad", [bad])
    # value-level failures count towards the gate too (3 of 20 rows touched)
    with pytest.raises(DataError, match=r"3 of 20 rows.*max_quarantine_fraction.*hard_range\[mmHg\]"):
        validate_dataset(_cfg("validate.max_quarantine_fraction=0.1"), raw, out, workers=1)
    # the earlier published output is untouched and no temp dirs linger
    assert _published(out) == ["quarantine", "validated", "validation"]
    assert json.loads((out / "validation" / "report.json").read_text())["rows_in"] == first["rows_in"]
    report = validate_dataset(_cfg("validate.max_quarantine_fraction=0.2"), raw, out, workers=1)
    assert report["rows_quarantined"] == 0 and report["rows_valid"] == 20
    assert report["values_quarantined"] == 3 and report["rows_with_quarantined_values"] == 3


def test_patient_spanning_shards_fails(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", [clean_frame(5, 3), clean_frame(5, 3, first_pid=4)])
    with pytest.raises(DataError, match=r"patient_id 4 .*several shards"):
        validate_dataset(_cfg(), raw, tmp_path / "run", workers=1)


# --- CLI -------------------------------------------------------------------------------------------------


def test_cli_validate(tmp_path: Path) -> None:
    from clinrisk.cli.app import build_app

    raw = write_raw(tmp_path / "raw", [_set(clean_frame(10, 4), 1, "sex", "?", pl.String)])
    out = tmp_path / "run"
    sets = ["--set", f"generate.first_year={FIRST_YEAR}", "--set", f"generate.last_year={LAST_YEAR}"]
    result = CliRunner().invoke(
        build_app(), ["validate", *sets, "--raw", str(raw), "--out", str(out), "-w", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "40 rows" in result.output and "1 quarantined" in result.output and "isin" in result.output
    assert (out / "validation" / "report.md").is_file()

    shard_file(raw / "observed", 0).write_bytes(b"junk")
    result = CliRunner().invoke(
        build_app(), ["validate", *sets, "--raw", str(raw), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2
    assert "shard=000/part.parquet" in result.output


# --- integration with the real generator -----------------------------------------------------------------


def test_generated_dataset_validates(tmp_path: Path) -> None:
    gen = pytest.importorskip("clinrisk.generate", reason="generator not available yet")
    cfg = load_config(None, ["generate.n_patients=600", "generate.n_shards=2", "generate.block_size=100"])
    raw = tmp_path / "raw"
    gen.generate_dataset(cfg, raw, workers=1)
    report = validate_dataset(cfg, raw, tmp_path / "run", workers=1)
    assert report["n_shards"] == 2
    assert report["rows_in"] == report["rows_valid"] + report["rows_quarantined"] > 0
    # the generator's unit faults are for the units layer: raw validation quarantines (almost) nothing
    assert report["quarantine_fraction"] <= 0.005, report["failures_by_check"]
    v = pl.read_parquet(shard_file(tmp_path / "run" / "validated", 0))
    assert v.schema == pl.Schema(OBSERVED_SCHEMA)


def test_disjointness_check_names_the_smallest_shared_id_and_every_shard_holding_it() -> None:
    """The merge step's dataset gate: the first offender is the smallest id found in two shards, listed with
    every shard that holds it (sorted); ids repeated inside one shard are no clash."""
    import polars as pl

    from clinrisk.validate import _check_patients_disjoint

    def ids(*v: int) -> pl.Series:
        return pl.Series("patient_id", list(v), dtype=pl.Int64)

    _check_patients_disjoint({0: ids(1, 1, 2), 1: ids(3, 4), 2: ids(5)})
    _check_patients_disjoint({0: ids()})
    with pytest.raises(DataError) as exc:
        _check_patients_disjoint({2: ids(7, 3, 9), 0: ids(7, 8), 1: ids(3, 3), 4: ids(9)})
    assert str(exc.value) == (
        "patient_id 3 appears in several shards [1, 2] (a patient must never span shards)"
    )


def test_disjointness_reads_ids_only_for_shards_whose_ranges_overlap() -> None:
    """Shards with disjoint id ranges (the generator's contiguous blocks) cannot share a patient: their ids
    are never read. Overlapping runs are read and compared; a null id makes every shard compared."""
    import polars as pl

    from clinrisk.validate import ShardIds, _check_patients_disjoint

    read: list[int] = []

    def shard(k: int, *v: int | None) -> ShardIds:
        ids = pl.Series("patient_id", list(v), dtype=pl.Int64)

        def load() -> pl.Series:
            read.append(k)
            return ids

        present = ids.drop_nulls()
        return ShardIds(present.min(), present.max(), ids.null_count() > 0, load)

    _check_patients_disjoint({0: shard(0, 1, 5), 1: shard(1, 6, 9), 2: shard(2, 10, 10), 3: shard(3)})
    assert read == []
    with pytest.raises(DataError, match=r"patient_id 7 appears in several shards \[1, 2\]"):
        _check_patients_disjoint(
            {0: shard(0, 1, 5), 1: shard(1, 6, 7, 9), 2: shard(2, 7, 8), 3: shard(3, 20)}
        )
    assert sorted(read) == [1, 2]  # shards 0 and 3 overlap no one: not read
    read.clear()
    _check_patients_disjoint({0: shard(0, 1, 2), 1: shard(1, 3, None)})
    assert sorted(read) == [0, 1]


def test_shard_ids_give_the_range_without_reading_the_ids(tmp_path) -> None:
    import polars as pl

    from clinrisk.config import ClinriskConfig
    from clinrisk.validate import shard_ids

    cfg = ClinriskConfig()
    table = tmp_path / "shard=003"
    table.mkdir()
    pl.DataFrame({"patient_id": [40, 12, 40, 31], "year": [1, 2, 3, 4]}).write_parquet(table / "part.parquet")
    got = shard_ids(cfg, tmp_path, 3)
    assert (got.low, got.high, got.has_null) == (12, 40, False)
    assert sorted(got.read().to_list()) == [12, 31, 40]
