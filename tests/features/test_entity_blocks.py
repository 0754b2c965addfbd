"""A shard's features built in blocks of whole patients (``features.block_rows``) are the table built whole,
byte for byte once written; blocks hold whole entities; only an ``entity_local`` feature definition is
split, and a null entity id means no split."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from clinrisk.config import load_config
from clinrisk.entity_blocks import block_bounds, block_starts
from clinrisk.feature_table import FeatureSpec
from clinrisk.stages import features as stage
from clinrisk.stages.catalog import Catalog
from clinrisk.usecase_io import scan_validated
from clinrisk.usecases import get

OVERRIDES = ["generate.n_patients=600", "generate.n_shards=2", "generate.block_size=150", "run.seed=5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from clinrisk.generate import generate_dataset
    from clinrisk.validate import validate_dataset

    root = tmp_path_factory.mktemp("blocks")
    cfg = load_config(None, OVERRIDES)
    generate_dataset(cfg, root / "raw", workers=1, progress=False)
    validate_dataset(cfg, root / "raw", root, workers=1)
    io = Catalog(paths={"validated": root / "validated", "feature_spec": root / "spec" / stage.SPEC_FILE})
    stage.fit_spec(cfg, io)
    return {"root": root, "validated": root / "validated", "spec": root / "spec" / stage.SPEC_FILE}


def _build_shard(data: dict[str, Path], block_rows: int, out: Path) -> Path:
    cfg = load_config(None, [*OVERRIDES, f"features.block_rows={block_rows}"])
    io = Catalog(
        paths={
            "validated": data["validated"],
            "feature_spec": data["spec"],
            "truth": data["root"] / "raw" / "truth",
            "features_shard": out,
        }
    )
    stage.build_shard(cfg, io, 0)
    return out


def _starts(tables: dict[str, pl.LazyFrame], block_rows: int) -> list[int]:
    return block_starts(tables, get("clinical").source.entity_column, block_rows)


def test_blocks_hold_whole_patients_and_about_equal_rows(data: dict[str, Path]) -> None:
    tables = scan_validated(get("clinical"), data["validated"], 0)
    rows = tables["observed"].collect()
    firsts = _starts(tables, 700)
    k = -(-rows.height // 700)
    assert len(firsts) == k and firsts == sorted(firsts) and firsts[0] == rows["patient_id"].min()
    sizes = [
        rows.filter(
            (pl.col("patient_id") >= lo) & (pl.col("patient_id") < hi if hi is not None else True)
        ).height
        for lo, hi in block_bounds(firsts)
    ]
    assert sum(sizes) == rows.height
    longest = int(rows.group_by("patient_id").len()["len"].max())  # type: ignore[arg-type]
    # Even blocks: none is more than one patient away from rows / k (no tiny tail block).
    assert all(abs(s - rows.height / k) <= longest for s in sizes), sizes
    assert _starts(tables, 0) == []  # 0: the whole shard
    assert _starts(tables, 10**9) == [firsts[0]]  # one block


def test_a_shard_built_in_blocks_is_the_shard_built_whole(data: dict[str, Path], tmp_path: Path) -> None:
    whole = _build_shard(data, 0, tmp_path / "whole")
    blocks = _build_shard(data, 300, tmp_path / "blocks")
    for rel in ("shard=000/part.parquet", "unit_quarantine/shard=000/part.parquet", "summary.json"):
        assert (whole / rel).read_bytes() == (blocks / rel).read_bytes(), rel
    table = pl.read_parquet(blocks / "shard=000" / "part.parquet")
    assert table.height > 0 and table["eval_label_true"].null_count() == 0  # the truth went through blocks
    tables = scan_validated(get("clinical"), data["validated"], 0)
    assert len(_starts(tables, 300)) > 3
    quarantine = pl.read_parquet(blocks / "unit_quarantine" / "shard=000" / "part.parquet")
    assert quarantine.height > 0  # the unit audit's blocks had rows to agree on


def test_only_an_entity_local_definition_is_built_in_blocks() -> None:
    assert getattr(get("clinical").features, "entity_local", False) is True
    # leads' table is not built per entity alone (a block can hold usage but no prediction row, which its
    # feature function reports as an error), so the stage builds its shards whole
    assert getattr(get("leads").features, "entity_local", False) is False


def test_a_null_entity_id_means_no_blocks(data: dict[str, Path]) -> None:
    tables = scan_validated(get("clinical"), data["validated"], 0)
    observed = tables["observed"].with_columns(pl.lit(None, dtype=pl.Int64).alias("patient_id"))
    assert _starts({"observed": observed}, 300) == []
    assert FeatureSpec.from_json(data["spec"]).feature_names  # the spec the shard tests built with


@pytest.mark.parametrize(
    ("value", "problem"), [("-5", "greater than or equal to 0"), ("abc", "valid integer")]
)
def test_a_bad_block_rows_is_a_config_error_naming_the_key(value: str, problem: str) -> None:
    from clinrisk.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"features\.block_rows: .*{problem}"):
        load_config(None, [f"features.block_rows={value}"])
