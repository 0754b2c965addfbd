"""Ingestion shards by one normalised entity key: an ID spelled ``24.0`` in one file and ``24`` in another
lands in one shard (not shard 0, not two shards), so the per-shard cross-file rules still hold."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from clinrisk.config import load_config
from clinrisk.io import list_shards
from clinrisk.usecase_io import ingest_raw
from clinrisk.usecases.base import whole_number_entity_key
from clinrisk.usecases.leads.config import LeadsGenerateConfig
from clinrisk.usecases.leads.generator import simulate, write_csvs
from clinrisk.validate import validate_dataset

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "configs" / "leads" / "tiny.yaml"
REAL = ["params.source.kind=folder", "params.features.first_snapshot=2019-03-18", "params.features.data_end=2019-10-14"]  # fmt: skip


def test_default_key_reads_every_spelling_of_a_whole_number() -> None:
    text = pl.DataFrame({"ID": ["24", " 24 ", "24.0", "2.4e1", "24.5", "x", None]})
    assert text.select(whole_number_entity_key("ID")).to_series().to_list() == [
        24,
        24,
        24,
        24,
        None,
        None,
        None,
    ]
    assert pl.DataFrame({"ID": [24.0, 7.0]}).select(whole_number_entity_key("ID")).to_series().to_list() == [
        24,
        7,
    ]
    big = 2**62 + 1  # integer ids map to themselves, beyond float precision too
    assert pl.DataFrame({"ID": [big]}).select(whole_number_entity_key("ID")).item() == big


def _spell_ids_as_floats(csv: Path) -> None:
    lines = csv.read_text().splitlines()
    out = [lines[0]] + [f"{line.split(',', 1)[0]}.0,{line.split(',', 1)[1]}" for line in lines[1:]]
    csv.write_text("\n".join(out) + "\n")


def test_mixed_id_spellings_across_files_land_in_one_shard(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    write_csvs(simulate(LeadsGenerateConfig(n_companies=300, n_weeks=40, signup_weeks=20), 21), export)
    _spell_ids_as_floats(export / "customers.csv")  # "24.0" there, "24" in usage_actions.csv
    assert ".0," in (export / "customers.csv").read_text().splitlines()[1]
    cfg = load_config(TINY, REAL)
    ing = ingest_raw(cfg, export, tmp_path / "raw", n_shards=3)
    shard_of: dict[str, dict[int, int]] = {}
    for table in ("customers", "noncustomers", "usage_actions"):
        files = list_shards(tmp_path / "raw" / table)
        assert len(files) == 3
        ids = {
            s: set(pl.read_parquet(f).select(whole_number_entity_key("ID")).to_series().to_list())
            for s, f in enumerate(files)
        }
        assert all(ids[s] for s in ids), f"{table}: a shard is empty (everything in one shard?)"
        shard_of[table] = {i: s for s, group in ids.items() for i in group}
    usage = shard_of["usage_actions"]
    companies = shard_of["customers"] | shard_of["noncustomers"]
    assert set(usage) <= set(companies)
    assert all(usage[i] == companies[i] for i in usage), "a company's usage is in another shard"
    # end to end: the per-shard cross-file rule (usage of an unknown company) quarantines nothing
    report = validate_dataset(cfg, tmp_path / "raw", tmp_path / "run")
    assert report["rows_in"] == ing["rows"] and report["rows_quarantined"] == 0


def test_a_usecase_hook_overrides_the_default_key() -> None:
    from types import SimpleNamespace

    from clinrisk.usecase_io import entity_key

    class Source:
        def entity_column(self, table: str) -> str:
            return "ID"

    class HookedSource(Source):
        def entity_key(self, table: str) -> pl.Expr:  # ids written "C-24"
            return pl.col("ID").str.strip_prefix("C-").cast(pl.Int64, strict=False)

    df = pl.DataFrame({"ID": ["C-24", "24.0"]})
    default = SimpleNamespace(source=Source())
    hooked = SimpleNamespace(source=HookedSource())
    assert df.select(entity_key(default, "t")).to_series().to_list() == [None, 24]  # type: ignore[arg-type]
    assert df.select(entity_key(hooked, "t")).to_series().to_list() == [24, None]  # type: ignore[arg-type]
