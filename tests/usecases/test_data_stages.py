"""`clinrisk generate`, `clinrisk ingest` and `clinrisk validate` run the selected use case's data source and
schema through the same per-shard code as the KFP steps (clinical and the two-table toy)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from clinrisk.cli.app import build_app
from clinrisk.cli.common import SELECTION
from clinrisk.config import load_config
from clinrisk.io import list_shards, read_json
from clinrisk.usecase_io import generate_raw, ingest_raw
from clinrisk.validate import validate_dataset
from tests.usecases.conftest import TOY, toy_registered

REPO = Path(__file__).resolve().parents[2]
SMALL = ["generate.n_patients=300", "generate.block_size=100", "generate.n_shards=2", "generate.alpha=-4.6"]


@pytest.fixture(autouse=True)
def _clear_selection() -> None:
    SELECTION.clear()


def test_clinical_generate_ingest_validate_via_cli(tmp_path: Path) -> None:
    app = build_app()
    sets = [x for s in SMALL for x in ("--set", s)]
    cfg_file = str(REPO / "configs/clinical/tiny.yaml")
    res = CliRunner().invoke(
        app,
        [
            "generate",
            "--usecase",
            "clinical",
            "--config",
            cfg_file,
            *sets,
            "--out",
            str(tmp_path / "raw"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "generated" in res.output and len(list_shards(tmp_path / "raw" / "observed")) == 2
    # A real export: the observed table as CSV (text columns; validation casts and quarantines).
    export = tmp_path / "export"
    export.mkdir()
    obs = pl.read_parquet(list_shards(tmp_path / "raw" / "observed"))
    obs.write_csv(export / "observed.csv")
    res = CliRunner().invoke(
        app,
        ["ingest", "--usecase", "clinical", "--config", cfg_file, *sets, "--source", str(export), "--shards", "3",
         "--out", str(tmp_path / "ingested")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    manifest = read_json(tmp_path / "ingested" / "manifest.json")
    assert manifest["rows"] == obs.height and manifest["n_shards"] == 3
    assert not (tmp_path / "ingested" / "truth").exists()
    res = CliRunner().invoke(
        app,
        ["validate", "--usecase", "clinical", "--config", cfg_file, *sets, "--raw", str(tmp_path / "ingested"),
         "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = read_json(tmp_path / "run" / "validation" / "report.json")
    assert report["rows_in"] == obs.height == report["rows_valid"] + report["rows_quarantined"]


def test_ingest_of_an_unreadable_export_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "observed.csv").write_text('patient_id,year\n1,"2010\n')  # unterminated quote
    res = CliRunner().invoke(
        build_app(),
        ["ingest", "--usecase", "clinical", "--source", str(tmp_path), "--out", str(tmp_path / "o")],
    )
    assert res.exit_code == 2
    assert res.output.startswith("error: ") and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()
    res = CliRunner().invoke(
        build_app(), ["ingest", "--usecase", "clinical", "--source", str(tmp_path / "nope")]
    )
    assert res.exit_code == 2 and "nope" in res.output


def test_toy_generate_ingest_validate(tmp_path: Path) -> None:
    with toy_registered():
        cfg = load_config(REPO / "tests/usecases/toy.yaml")
        m = generate_raw(cfg, tmp_path / "raw", workers=1, progress=False)
        assert m["n_shards"] == 2 and (tmp_path / "raw" / "truth").is_dir()
        report = validate_dataset(cfg, tmp_path / "raw", tmp_path / "run")
        for table in ("accounts", "usage"):  # one validated directory per table
            assert len(list_shards(tmp_path / "run" / "validated" / table)) == 2
        assert report["rows_in"] == m["rows"]
        # the toy's real format: <table>/*.parquet
        export = tmp_path / "export"
        for table in ("accounts", "usage"):
            (export / table).mkdir(parents=True)
            pl.read_parquet(list_shards(tmp_path / "raw" / table)).write_parquet(export / table / "x.parquet")
        ing = ingest_raw(cfg, export, tmp_path / "ingested", n_shards=3)
        assert ing["rows"] == m["rows"]
        again = validate_dataset(cfg, tmp_path / "ingested", tmp_path / "run2")
        assert again["rows_in"] == m["rows"] and again["n_shards"] == 3
        assert cfg.run.usecase == TOY
