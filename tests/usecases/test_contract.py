"""The plugin contract, checked the same way for every registered use case (clinical, leads, ...).

Each use case's ``tiny`` config, shrunk further by ``SMALL``, goes through its DataSource, RawSchema,
FeatureDefinition and ServingContract; the results must satisfy the shared contracts the rest of the
platform relies on (plan-owned fan-out, determinism, quarantine columns, the feature table, one feature
definition for training and serving).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from clinrisk.config import load_config
from clinrisk.errors import ConfigError, DataError
from clinrisk.feature_table import EVAL_REQUIRED, KEY_COLUMNS, LABEL_COLUMNS, FeatureSpec, check_feature_table
from clinrisk.usecases import DEFAULT_USECASE, get, known
from clinrisk.usecases.base import QUARANTINE_REASON_COLUMNS, RawShard, UseCase
from tests.usecases.conftest import TOY, toy_registered

REPO = Path(__file__).resolve().parents[2]
# Per use case: overrides that make the tiny config small enough for a unit test (seconds).
SMALL: dict[str, list[str]] = {
    "clinical": ["generate.n_patients=400", "generate.block_size=100", "generate.n_shards=2"],
}


def _cfg(usecase: UseCase) -> object:
    return load_config(REPO / usecase.configs["tiny"], SMALL.get(usecase.name, []))


def _tabular(usecase: UseCase) -> None:
    """The feature-table and tabular-serving contracts apply to use cases on the shared LightGBM path only."""
    if usecase.model_family != "tabular":
        pytest.skip(
            f"use case {usecase.name!r} trains and serves its own model (model_family={usecase.model_family!r})"
        )


@pytest.fixture(scope="module", params=[*known(), TOY])
def shard0(request: pytest.FixtureRequest) -> Iterator[tuple[UseCase, object, dict, RawShard]]:
    with toy_registered() if request.param == TOY else contextlib.nullcontext():
        usecase = get(request.param)
        cfg = _cfg(usecase)
        plan = usecase.source.plan(cfg)
        yield usecase, cfg, plan, usecase.source.generate_shard(cfg, plan, 0)


def test_registry_lists_clinical_first_and_rejects_unknown_names() -> None:
    assert known()[0] == DEFAULT_USECASE == "clinical"
    with pytest.raises(ConfigError, match=r"^unknown use case 'nope'; known: clinical"):
        get("nope")


def test_unknown_usecase_in_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown use case 'nope'"):
        load_config(None, ["run.usecase=nope"])


def test_clinical_takes_no_params() -> None:
    with pytest.raises(ConfigError, match="params: use case 'clinical' takes no params"):
        load_config(None, ["params.x=1"])


def test_usecase_declares_names_and_shipped_configs(shard0) -> None:
    usecase, cfg, _, _ = shard0
    assert usecase.names.usecase == usecase.name == cfg.run.usecase
    assert usecase.names.namespace and usecase.names.model_name
    for kind in ("default", "tiny"):
        assert (REPO / usecase.configs[kind]).is_file()
        assert load_config(REPO / usecase.configs[kind]).run.usecase == usecase.name


def test_plan_owns_fan_out_and_generation_is_deterministic(shard0) -> None:
    usecase, cfg, plan, raw = shard0
    n = plan["n_shards"]
    assert isinstance(n, int) and n >= 1
    assert set(raw.tables) == set(usecase.source.tables)
    assert raw.truth is not None, "a synthetic generator must write its known truth"
    again = usecase.source.generate_shard(cfg, usecase.source.plan(cfg), 0)
    for name, table in raw.tables.items():
        assert table.equals(again.tables[name]), name


def test_manifest_counts_every_shard(shard0) -> None:
    usecase, cfg, plan, _ = shard0
    shards = {s: usecase.source.generate_shard(cfg, plan, s) for s in range(plan["n_shards"])}
    manifest = usecase.source.manifest(cfg, plan, shards.__getitem__)
    assert manifest["n_shards"] == plan["n_shards"]
    assert manifest["rows"] == sum(t.height for r in shards.values() for t in r.tables.values())
    assert manifest["observed_hash"]


def test_validation_quarantines_with_reasons_and_accounts_for_every_row(shard0) -> None:
    usecase, cfg, _, raw = shard0
    assert set(usecase.schema.schemas(cfg)) == set(usecase.source.tables)
    res = usecase.schema.validate(cfg, raw, 0)
    rows_in = sum(t.height for t in raw.tables.values())
    assert res.stats["rows_in"] == rows_in
    valid = sum(t.height for t in res.tables.values())
    quarantined = sum(t.height for t in res.quarantine.values())
    assert valid + quarantined == rows_in
    for name, q in res.quarantine.items():
        assert set(QUARANTINE_REASON_COLUMNS) <= set(q.columns), name


def test_feature_table_contract_and_serving_parity(shard0) -> None:
    usecase, cfg, _, raw = shard0
    _tabular(usecase)
    valid = usecase.schema.validate(cfg, raw, 0)
    tables = {k: v.lazy() for k, v in valid.tables.items()}
    spec = usecase.features.fit_spec(cfg, tables)
    assert spec.usecase == usecase.name
    spec = FeatureSpec.from_json(spec.to_json())  # round-trips through feature_spec.json
    assert raw.truth is not None
    table = usecase.features.build(cfg, tables, spec, raw.truth.lazy()).collect()
    check_feature_table(table.schema, spec, where=usecase.name)
    assert table.height > 0
    for col in (*KEY_COLUMNS, *LABEL_COLUMNS, *EVAL_REQUIRED):
        assert col in table.columns
    for name in spec.feature_names:
        assert table.schema[name] == spec.polars_dtype(name), name
    for col in usecase.labels.slices:
        # evaluation derives age_band from age (evaluate.age_band_edges); every other slice is a column
        have = col in table.columns or (col == "age_band" and "age" in table.columns)
        assert have, f"slice column {col} not in the feature table"
    defaults = load_config(None, [f"run.usecase={usecase.name}"])
    assert defaults.evaluate.slice_columns == list(usecase.labels.slices)  # the default is the use case's
    # Serving: the example instance parses and yields exactly one row of the spec's features.
    example = dict(usecase.serving.example_instance())
    batch = usecase.serving.parse({"instances": [example, example]}, spec, cfg.serving)
    assert batch.n_instances == 2
    feats = usecase.serving.features(batch, spec)
    assert feats.columns == spec.feature_names and feats.height == 2
    assert feats.row(0) == feats.row(1)


def test_serving_rejects_a_malformed_body(shard0) -> None:
    from clinrisk.serving.request import InvalidRequest

    usecase, cfg, _, raw = shard0
    _tabular(usecase)
    valid = usecase.schema.validate(cfg, raw, 0)
    spec = usecase.features.fit_spec(cfg, {k: v.lazy() for k, v in valid.tables.items()})
    for body in ({}, {"instances": []}, {"instances": [{"nonsense": 1}]}, [1, 2]):
        with pytest.raises(InvalidRequest):
            usecase.serving.parse(body, spec, cfg.serving)


def test_ingest_reads_the_real_format_back(shard0, tmp_path: Path) -> None:
    usecase, cfg, _, raw = shard0
    for name, table in raw.tables.items():
        (tmp_path / name).mkdir()
        table.write_parquet(tmp_path / name / "part.parquet")
    got = usecase.source.ingest(cfg, tmp_path)
    assert set(got) == set(raw.tables)
    for name, table in raw.tables.items():
        assert got[name].collect().height == table.height
        assert usecase.source.entity_column(name) in table.columns
    with pytest.raises(DataError, match="missing"):  # names the path, no traceback
        usecase.source.ingest(cfg, tmp_path / "missing")


def test_serving_features_equal_the_training_rows(shard0) -> None:
    """One definition: training rows rebuilt from V1 instances give the same features, bit for bit."""
    usecase, cfg, _, raw = shard0
    _tabular(usecase)
    valid = usecase.schema.validate(cfg, raw, 0)
    tables = {k: v.lazy() for k, v in valid.tables.items()}
    spec = usecase.features.fit_spec(cfg, tables)
    assert raw.truth is not None
    table = usecase.features.build(cfg, tables, spec, raw.truth.lazy()).collect()
    want = table.sample(n=min(6, table.height), seed=3).sort("patient_id", "year")
    keys = list(zip(want["patient_id"].to_list(), want["year"].to_list(), strict=True))
    instances = usecase.serving.instances(valid.tables, keys)
    batch = usecase.serving.parse({"instances": instances}, spec, cfg.serving)
    assert list(batch.keys) != [] and batch.n_instances == len(keys)
    got = usecase.serving.features(batch, spec)
    assert got.equals(want.select(spec.feature_names))
