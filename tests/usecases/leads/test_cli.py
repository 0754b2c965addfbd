"""A real export through the CLI: `clinrisk ingest` then `clinrisk validate` for the leads use case.

Bad files answer one `error: <file>: <problem>` line with exit code 2 and no traceback; bad rows are
quarantined with their reason and CSV line and the counts add up.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from clinrisk.io import read_json
from clinrisk.usecases.leads.config import LeadsGenerateConfig
from clinrisk.usecases.leads.generator import simulate, write_csvs

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "configs" / "leads" / "tiny.yaml"
REAL = ["--set", "params.source.kind=folder", "--set", "params.features.first_snapshot=2019-03-18", "--set", "params.features.data_end=2019-10-14"]  # fmt: skip


def _clinrisk(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "clinrisk", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    write_csvs(simulate(LeadsGenerateConfig(n_companies=300, n_weeks=40, signup_weeks=20), 21), folder)
    return folder


def test_ingest_then_validate_quarantines_a_bad_row_with_its_line(export: Path, tmp_path: Path) -> None:
    usage = export / "usage_actions.csv"
    lines = usage.read_text().splitlines()
    parts = lines[41].split(",")
    parts[1] = "2019-02-30 00:00:00"  # no such day
    lines[41] = ",".join(parts)
    usage.write_text("\n".join(lines) + "\n")
    raw, out = tmp_path / "raw", tmp_path / "run"
    ing = _clinrisk(
        "ingest",
        "--usecase",
        "leads",
        "--config",
        TINY,
        *REAL,
        "--source",
        export,
        "--shards",
        "2",
        "--out",
        raw,
    )
    assert ing.returncode == 0, ing.stderr
    assert "ingested" in ing.stdout and "use case leads into 2 shard(s)" in ing.stdout
    val = _clinrisk(
        "validate",
        "--usecase",
        "leads",
        "--config",
        TINY,
        *REAL,
        "--raw",
        raw,
        "--out",
        out,
        "--workers",
        "1",
    )
    assert val.returncode == 0, val.stderr
    report = read_json(out / "validation" / "report.json")
    assert report["rows_quarantined"] == 1 and report["rows_in"] == report["rows_valid"] + 1
    q = pl.concat(
        pl.read_parquet(f) for f in (out / "quarantine" / "usage_actions").glob("shard=*/part.parquet")
    )
    assert q["_line"].to_list() == [42] and "cannot read '2019-02-30 00:00:00'" in q["_reason"][0]


def _extra_field_on_line_3(folder: Path) -> None:
    path = folder / "usage_actions.csv"
    lines = path.read_text().splitlines()
    lines[2] += ",99"
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: pl.read_csv(d / "noncustomers.csv").drop("INDUSTRY").write_csv(d / "noncustomers.csv"),
            "noncustomers.csv: required column(s) missing: INDUSTRY",
        ),
        (lambda d: (d / "customers.csv").unlink(), "customers.csv: file not found"),
        (
            _extra_field_on_line_3,
            "usage_actions.csv: line 3: expected 10 fields (as in the header), found 11",
        ),
    ],
)
def test_bad_files_are_one_error_line_exit_2_no_traceback(
    export: Path, tmp_path: Path, mutate, message: str
) -> None:  # type: ignore[no-untyped-def]
    mutate(export)
    res = _clinrisk(
        "ingest", "--usecase", "leads", "--config", TINY, *REAL, "--source", export, "--out", tmp_path / "raw"
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "raw").exists()
