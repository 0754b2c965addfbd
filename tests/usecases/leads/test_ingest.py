"""Ingestion of a lead-conversion export: row-level quarantine with reasons, file-level rejection in one line."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from clinrisk.errors import DataError
from clinrisk.usecases.leads.ingest import ingest_to_dir, read_export, validate_tables
from clinrisk.usecases.leads.tables import CUSTOMERS_FILE, NONCUSTOMERS_FILE, USAGE_FILE


def _edit(path: Path, line: int, old: str, new: str) -> str:
    """Replace ``old`` by ``new`` on 1-based ``line`` of a CSV file; returns the edited line."""
    lines = path.read_text().splitlines()
    assert old in lines[line - 1], (old, lines[line - 1])
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_text("\n".join(lines) + "\n")
    return lines[line - 1]


def _field(path: Path, line: int, index: int, value: str) -> None:
    lines = path.read_text().splitlines()
    parts = lines[line - 1].split(",")
    parts[index] = value
    lines[line - 1] = ",".join(parts)
    path.write_text("\n".join(lines) + "\n")


def _validate(folder: Path, max_q: float = 1.0):  # type: ignore[no-untyped-def]
    return validate_tables(read_export(folder), max_quarantine_fraction=max_q)


def _quarantine(tables, file: str) -> pl.DataFrame:  # type: ignore[no-untyped-def]
    return tables.results[file].quarantine


def test_clean_export_has_no_quarantine_and_counts_add_up(export_dir: Path) -> None:
    t = _validate(export_dir, 0.0)
    for r in t.results.values():
        s = r.stats
        assert s["rows_in"] == s["rows_valid"] + s["rows_quarantined"] and s["rows_quarantined"] == 0


def test_unparsable_date_is_quarantined_with_its_line_and_value(export_dir: Path) -> None:
    _field(export_dir / USAGE_FILE, 5, 1, "2019-13-45 00:00:00")
    _field(export_dir / CUSTOMERS_FILE, 3, 1, "yesterday")
    t = _validate(export_dir)
    q = _quarantine(t, USAGE_FILE).filter(pl.col("_line") == 5)
    assert q.height == 1 and q["_column"][0] == "WHEN_TIMESTAMP"
    assert "cannot read '2019-13-45 00:00:00'" in q["_reason"][0]
    assert q["WHEN_TIMESTAMP"][0] == "2019-13-45 00:00:00"  # the original text is kept
    qc = _quarantine(t, CUSTOMERS_FILE)
    assert qc["_line"].to_list() == [3] and "yesterday" in qc["_reason"][0]
    # without a CLOSEDATE nobody knows which usage precedes conversion: the company's usage goes too
    bad_id = int(qc["ID"][0])
    qu = _quarantine(t, USAGE_FILE).filter(pl.col("ID") == str(bad_id))
    assert qu.height > 0 and set(qu["_check"]) == {"known_company"}
    assert t.results[USAGE_FILE].stats["rows_quarantined"] == qu.height + 1


def test_negative_counts_and_ranks_are_quarantined(export_dir: Path) -> None:
    _field(export_dir / USAGE_FILE, 2, 2, "-4")
    _field(export_dir / USAGE_FILE, 3, 9, "-1")
    last = len((export_dir / NONCUSTOMERS_FILE).read_text().splitlines())
    _field(export_dir / NONCUSTOMERS_FILE, last, 1, "-7")
    t = _validate(export_dir)
    q = _quarantine(t, USAGE_FILE).filter(pl.col("_line") <= 3).sort("_line")
    assert q["_line"].to_list() == [2, 3]
    assert q["_reason"][0] == "ACTIONS_CRM_CONTACTS must be >= 0"
    assert q["_reason"][1] == "USERS_EMAIL must be >= 0"
    assert _quarantine(t, NONCUSTOMERS_FILE)["_reason"][0] == "ALEXA_RANK must be >= 1"


def test_id_in_both_files_quarantines_both_rows_and_its_usage(export_dir: Path, leads_data) -> None:  # type: ignore[no-untyped-def]
    cust_id = leads_data.customers["ID"][0]
    _field(export_dir / NONCUSTOMERS_FILE, 2, 0, str(cust_id))
    non_id = leads_data.noncustomers["ID"][0]
    t = _validate(export_dir)
    qc, qn = _quarantine(t, CUSTOMERS_FILE), _quarantine(t, NONCUSTOMERS_FILE)
    assert qc["ID"].to_list() == [str(cust_id)] and qn["ID"].to_list() == [str(cust_id)]
    assert "also appears in noncustomers.csv" in qc["_reason"][0]
    assert "also appears in customers.csv" in qn["_reason"][0]
    qu = _quarantine(t, USAGE_FILE)
    n_usage = leads_data.usage.filter(pl.col("ID").is_in([cust_id, non_id])).height
    assert qu.height == n_usage > 0  # usage of the ambiguous ID and of the overwritten noncustomer
    assert set(qu["_check"]) == {"known_company"}
    assert cust_id not in t.customers["ID"] and cust_id not in t.noncustomers["ID"]


def test_duplicates_identical_copy_kept_once_conflicts_all_quarantined(export_dir: Path) -> None:
    path = export_dir / USAGE_FILE
    lines = path.read_text().splitlines()
    conflict = lines[3].split(",")
    conflict[2] = str(int(conflict[2]) + 1)
    path.write_text("\n".join([*lines, lines[1], ",".join(conflict)]) + "\n")
    t = _validate(export_dir)
    q = _quarantine(t, USAGE_FILE).sort("_line")
    n = len(lines)
    assert q["_line"].to_list() == [4, n + 1, n + 2]
    assert q["_check"].to_list() == ["duplicate_conflict", "duplicate_copy", "duplicate_conflict"]
    assert t.usage.height == n - 1 - 1  # one data row lost to the conflict; the identical copy is dropped


def test_missing_value_in_a_required_column_is_quarantined(export_dir: Path) -> None:
    _field(export_dir / CUSTOMERS_FILE, 2, 1, "")
    q = _quarantine(_validate(export_dir), CUSTOMERS_FILE)
    assert q["_reason"].to_list() == ["CLOSEDATE must not be empty"]


def test_unknown_employee_range_is_quarantined(export_dir: Path) -> None:
    _field(export_dir / NONCUSTOMERS_FILE, 2, 2, "about fifty")
    q = _quarantine(_validate(export_dir), NONCUSTOMERS_FILE)
    assert q["_check"].to_list() == ["parse"] and "'about fifty'" in q["_reason"][0]


@pytest.mark.parametrize(
    ("file", "mutate", "message"),
    [
        (
            CUSTOMERS_FILE,
            lambda p: pl.read_csv(p).drop("MRR").write_csv(p),
            r"customers\.csv: required column\(s\) missing: MRR",
        ),
        (USAGE_FILE, lambda p: p.unlink(), r"usage_actions\.csv: file not found"),
        (
            NONCUSTOMERS_FILE,
            lambda p: p.write_text(""),
            r"noncustomers\.csv: not a CSV file with a header \(the file is empty\)",
        ),
        (
            USAGE_FILE,
            lambda p: _edit(p, 7, ",", ",,"),
            r"usage_actions\.csv: line 7: expected 10 fields \(as in the header\), found 11",
        ),
        (
            CUSTOMERS_FILE,
            lambda p: p.write_bytes(p.read_bytes().replace(b"\n", b"\n\xff\xfe", 3)),
            r"customers\.csv: .*line 2: not UTF-8",
        ),
    ],
)
def test_file_level_problems_are_one_line_naming_the_file(
    export_dir: Path, file: str, mutate, message: str
) -> None:  # type: ignore[no-untyped-def]
    mutate(export_dir / file)
    with pytest.raises(DataError, match=message) as info:
        _validate(export_dir)
    assert "\n" not in str(info.value)


def test_a_column_that_never_parses_rejects_the_file_naming_line_and_column(export_dir: Path) -> None:
    path = export_dir / USAGE_FILE
    text = path.read_text().splitlines()
    rows = [",".join([r.split(",")[0], "03/04/2019", *r.split(",")[2:]]) for r in text[1:]]
    path.write_text("\n".join([text[0], *rows]) + "\n")
    with pytest.raises(
        DataError, match=r"usage_actions\.csv: line 2: column 'WHEN_TIMESTAMP': none of its \d+ values parse"
    ):
        _validate(export_dir)


def test_too_much_quarantine_fails_and_publishes_nothing(export_dir: Path, tmp_path: Path) -> None:
    for line in range(2, 12):
        _field(export_dir / NONCUSTOMERS_FILE, line, 1, "-1")
    out = tmp_path / "ingested"
    with pytest.raises(
        DataError,
        match=r"noncustomers\.csv: 10 of \d+ rows quarantined .*first: line 2: ALEXA_RANK must be >= 1",
    ):
        ingest_to_dir(export_dir, out, max_quarantine_fraction=0.01)
    assert not out.exists()


def test_ingest_to_dir_publishes_tables_quarantine_and_report(export_dir: Path, tmp_path: Path) -> None:
    _field(export_dir / USAGE_FILE, 2, 2, "-4")
    out = tmp_path / "ingested"
    report = ingest_to_dir(export_dir, out, max_quarantine_fraction=0.5)
    assert report[USAGE_FILE]["rows_quarantined"] == 1
    assert pl.read_parquet(out / "quarantine" / "usage_actions.parquet").height == 1
    assert (
        pl.read_parquet(out / "validated" / "usage_actions.parquet").height
        == report[USAGE_FILE]["rows_valid"]
    )


def test_extra_columns_are_dropped_and_reported(export_dir: Path) -> None:
    path = export_dir / NONCUSTOMERS_FILE
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",NOTES", *(x + ",hi" for x in lines[1:])]) + "\n")
    t = _validate(export_dir)
    assert t.results[NONCUSTOMERS_FILE].stats["dropped_columns"] == ["NOTES"]
    assert "NOTES" not in t.noncustomers.columns


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n")),  # Windows line ends
        lambda p: p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes()),  # UTF-8 byte-order mark
    ],
)
def test_windows_exports_read_the_same(export_dir: Path, mutate) -> None:  # type: ignore[no-untyped-def]
    clean = _validate(export_dir, 0.0)
    for f in (CUSTOMERS_FILE, NONCUSTOMERS_FILE, USAGE_FILE):
        mutate(export_dir / f)
    again = _validate(export_dir, 0.0)
    assert again.usage.equals(clean.usage) and again.customers.equals(clean.customers)


def test_spreadsheet_integers_are_read_and_cross_file_ids_still_match(export_dir: Path, leads_data) -> None:  # type: ignore[no-untyped-def]
    """'24.0' / '1.5e6' are whole numbers; the ID-in-both rule sees them too."""
    path = export_dir / NONCUSTOMERS_FILE
    lines = path.read_text().splitlines()
    lines[1:] = [line.split(",", 1)[0] + ".0," + line.split(",", 1)[1] for line in lines[1:]]
    path.write_text("\n".join(lines) + "\n")
    clean = _validate(export_dir, 0.0)
    assert clean.noncustomers["ID"].to_list() == sorted(leads_data.noncustomers["ID"].to_list())
    _field(path, 2, 0, f"{leads_data.customers['ID'][0]}.0")
    t = _validate(export_dir)
    assert t.results[CUSTOMERS_FILE].stats["rows_quarantined"] == 1


def test_semicolon_separated_file_names_what_it_found(export_dir: Path) -> None:
    path = export_dir / NONCUSTOMERS_FILE
    path.write_text(path.read_text().replace(",", ";"))
    with pytest.raises(
        DataError, match=r"noncustomers\.csv: required column\(s\) missing: .*the header has: ID;ALEXA_RANK"
    ):
        _validate(export_dir)
