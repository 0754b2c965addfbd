"""The lead-conversion plugin beyond the shared contract: config, sharded ingestion, feature table, V1 contract."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from clinrisk.config import ClinriskConfig, load_config
from clinrisk.errors import ConfigError, DataError
from clinrisk.serving.request import InvalidRequest
from clinrisk.usecases import get
from clinrisk.usecases.base import RawShard
from clinrisk.usecases.leads.generator import write_csvs
from clinrisk.usecases.leads.plugin import EXAMPLE_INSTANCE, params
from clinrisk.usecases.leads.request import from_epoch_day

REPO = Path(__file__).resolve().parents[3]
LEADS = get("leads")


@pytest.fixture(scope="module")
def cfg() -> ClinriskConfig:
    return load_config(REPO / "configs/leads/tiny.yaml", ["params.generate.n_companies=600"])


@pytest.fixture(scope="module")
def shard(cfg: ClinriskConfig) -> RawShard:
    return LEADS.source.generate_shard(cfg, LEADS.source.plan(cfg), 0)


def test_plan_fans_out_whole_blocks_of_companies(cfg: ClinriskConfig) -> None:
    plan = LEADS.source.plan(
        load_config(REPO / "configs/leads/tiny.yaml", ["params.generate.n_companies=1234"])
    )
    assert plan["n_shards"] == 3 and plan["blocks"] == [[1, 500], [501, 500], [1001, 234]]
    raw = LEADS.source.generate_shard(cfg, LEADS.source.plan(cfg), 1)
    ids = pl.concat([raw.tables["customers"]["ID"], raw.tables["noncustomers"]["ID"]])
    assert ids.min() == 501 and ids.max() == 600


def test_params_are_validated_at_load_with_their_dotted_path() -> None:
    with pytest.raises(ConfigError, match=r"params\.generate\.n_companies"):
        load_config(REPO / "configs/leads/tiny.yaml", ["params.generate.n_companies=-1"])
    with pytest.raises(ConfigError, match=r"first_snapshot and features\.data_end are required"):
        load_config(
            REPO / "configs/leads/tiny.yaml", ["params.source.kind=folder", "params.source.folder=/x"]
        )
    with pytest.raises(ConfigError, match=r"params\.nonsense"):
        load_config(REPO / "configs/leads/tiny.yaml", ["params.nonsense=1"])


def test_csv_ingest_keeps_line_numbers_through_sharding(
    cfg: ClinriskConfig, shard: RawShard, tmp_path: Path
) -> None:
    from clinrisk.usecases.leads.generator import LeadsData

    t = shard.tables
    assert shard.truth is not None
    write_csvs(LeadsData(t["customers"], t["noncustomers"], t["usage_actions"], shard.truth), tmp_path)
    lines = (tmp_path / "usage_actions.csv").read_text().splitlines()
    parts = lines[9].split(",")
    parts[3] = "-3"
    lines[9] = ",".join(parts)
    (tmp_path / "usage_actions.csv").write_text("\n".join(lines) + "\n")
    raw = {k: v.collect() for k, v in LEADS.source.ingest(cfg, tmp_path).items()}
    # the framework shards by entity: keep only the companies of the bad row's shard, in another order
    bad_id = int(parts[0])
    sub = {k: v.filter(pl.col("ID").cast(pl.Int64) >= bad_id - 5).reverse() for k, v in raw.items()}
    res = LEADS.schema.validate(cfg, RawShard(sub), 0)
    q = res.quarantine["usage_actions"]
    assert q["_line"].to_list() == [10] and q["_reason"][0] == "ACTIONS_CRM_COMPANIES must be >= 0"
    assert res.stats["rows_quarantined"] == 1
    assert res.stats["by_file"]["usage_actions.csv"]["rows_quarantined"] == 1


def test_ingest_rejects_a_bad_file_in_one_line(cfg: ClinriskConfig, shard: RawShard, tmp_path: Path) -> None:
    from clinrisk.usecases.leads.generator import LeadsData

    t = shard.tables
    assert shard.truth is not None
    write_csvs(LeadsData(t["customers"], t["noncustomers"], t["usage_actions"], shard.truth), tmp_path)
    pl.read_csv(tmp_path / "customers.csv").drop("CLOSEDATE").write_csv(tmp_path / "customers.csv")
    with pytest.raises(
        DataError,
        match=r"^customers\.csv: required column\(s\) missing: CLOSEDATE \(the header has: ID, MRR, ",
    ):
        LEADS.source.ingest(cfg, tmp_path)
    (tmp_path / "customers.csv").unlink()
    with pytest.raises(DataError, match=r"customers\.csv: file not found"):
        LEADS.source.ingest(cfg, tmp_path)


def test_feature_table_split_truth_and_keys(cfg: ClinriskConfig, shard: RawShard) -> None:
    valid = LEADS.schema.validate(cfg, shard, 0)
    tables = {k: v.lazy() for k, v in valid.tables.items()}
    spec = LEADS.features.fit_spec(cfg, tables)
    assert shard.truth is not None
    table = LEADS.features.build(cfg, tables, spec, shard.truth.lazy()).collect()
    first, end = params(cfg).grid()
    snaps = table["year"].unique().sort().to_list()
    assert from_epoch_day(snaps[0]) == first
    assert from_epoch_day(snaps[-1]) + dt.timedelta(days=28) <= end
    assert set(table["split"].unique()) >= {"train", "validation", "test"}
    assert (table["eval_label_true"] == table["label_rec"]).all()
    assert table["eval_oracle_risk"].min() > 0 and table["eval_oracle_risk"].max() < 1  # type: ignore[operator]
    assert not set(spec.feature_names) & {"CLOSEDATE", "MRR", "ID", "INDUSTRY", "EMPLOYEE_RANGE"}


def _body(**changes: Any) -> dict[str, Any]:
    inst = copy.deepcopy(EXAMPLE_INSTANCE)
    inst.update(changes)
    return {"instances": [inst]}


def _usage_row(**changes: Any) -> dict[str, Any]:
    row = dict(EXAMPLE_INSTANCE["usage"][0])
    row.update(changes)
    return row


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_body(as_of="05/04/2020"), r"instances\[0\]\.as_of: cannot read '05/04/2020'"),
        (_body(EMPLOYEE_RANGE="lots"), r"instances\[0\]\.EMPLOYEE_RANGE: unknown value 'lots'"),
        (_body(ALEXA_RANK=0), r"instances\[0\]\.ALEXA_RANK: expected an integer >= 1"),
        (_body(usage=[]), r"instances\[0\]\.usage: expected a non-empty list"),
        (
            _body(usage=[_usage_row(WHEN_TIMESTAMP="2020-05-04 00:00:00")]),
            r"usage\[0\]\.WHEN_TIMESTAMP: .* is not before as_of",
        ),
        (_body(usage=[_usage_row(ACTIONS_EMAIL=-1)]), r"usage\[0\]\.ACTIONS_EMAIL: outside \[0, "),
        (_body(usage=[_usage_row(USERS_EMAIL=1.5)]), r"usage\[0\]\.USERS_EMAIL: expected an integer"),
        (
            _body(usage=[_usage_row(), _usage_row()]),
            r"usage\[1\]\.WHEN_TIMESTAMP: two usage rows with the same timestamp",
        ),
        (_body(usage=[{"WHEN_TIMESTAMP": "2020-04-06"}]), r"usage\[0\]: missing \['ACTIONS_CRM_COMPANIES'"),
        (_body(industry="Software"), r"instances\[0\]: unknown field\(s\) \['industry'\]"),
    ],
)
def test_v1_contract_names_the_instance_and_field(
    cfg: ClinriskConfig, shard: RawShard, body: dict[str, Any], message: str
) -> None:
    valid = LEADS.schema.validate(cfg, shard, 0)
    spec = LEADS.features.fit_spec(cfg, {k: v.lazy() for k, v in valid.tables.items()})
    with pytest.raises(InvalidRequest, match=message):
        LEADS.serving.parse(body, spec, cfg.serving)


def test_v1_contract_caps_instances_and_nulls_are_allowed(cfg: ClinriskConfig, shard: RawShard) -> None:
    valid = LEADS.schema.validate(cfg, shard, 0)
    spec = LEADS.features.fit_spec(cfg, {k: v.lazy() for k, v in valid.tables.items()})
    too_many = {"instances": [EXAMPLE_INSTANCE] * (cfg.serving.max_instances + 1)}
    with pytest.raises(InvalidRequest, match="max_instances"):
        LEADS.serving.parse(too_many, spec, cfg.serving)
    batch = LEADS.serving.parse(_body(ALEXA_RANK=None, INDUSTRY=None, EMPLOYEE_RANGE=None), spec, cfg.serving)
    feats = LEADS.serving.features(batch, spec)
    assert feats.height == 1 and feats["LOG10_ALEXA_RANK"][0] is None and feats["INDUSTRY_GROUP"][0] is None
    # an industry never seen in training is OTHER, not an error
    feats = LEADS.serving.features(
        LEADS.serving.parse(_body(INDUSTRY="Shipbuilding"), spec, cfg.serving), spec
    )
    assert feats["INDUSTRY_GROUP"][0] == "__OTHER__"


def test_ingest_refuses_an_export_without_rows(cfg: ClinriskConfig, shard: RawShard, tmp_path: Path) -> None:
    from clinrisk.usecases.leads.generator import LeadsData

    t = shard.tables
    assert shard.truth is not None
    write_csvs(
        LeadsData(t["customers"].head(0), t["noncustomers"].head(0), t["usage_actions"], shard.truth),
        tmp_path,
    )
    with pytest.raises(DataError, match="have no data rows"):
        LEADS.source.ingest(cfg, tmp_path)
    write_csvs(
        LeadsData(t["customers"], t["noncustomers"], t["usage_actions"].head(0), shard.truth), tmp_path
    )
    with pytest.raises(DataError, match=r"usage_actions\.csv: no data rows"):
        LEADS.source.ingest(cfg, tmp_path)


def test_an_export_outside_the_configured_calendar_is_a_clear_error(
    cfg: ClinriskConfig, shard: RawShard
) -> None:
    """Real data read with the generator's calendar: the grid finds no rows, and the error says what to set."""
    late = {
        **shard.tables,
        "usage_actions": shard.tables["usage_actions"].with_columns(
            pl.col("WHEN_TIMESTAMP") + pl.duration(days=3 * 365)
        ),
    }
    valid = LEADS.schema.validate(cfg, RawShard(late), 0)
    tables = {k: v.lazy() for k, v in valid.tables.items()}
    spec = LEADS.features.fit_spec(cfg, tables)
    with pytest.raises(
        DataError, match=r"no prediction rows on the snapshot grid .* set params\.features\.first_snapshot"
    ):
        LEADS.features.build(cfg, tables, spec, None).collect()
