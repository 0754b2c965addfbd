"""Features stage on REAL generated data: generate -> validate -> features via the library functions.

Tiny scale (a few hundred patients, two shards) so it runs in seconds; checks the contract between the
stages rather than numbers: the feature schema passes on every shard, the feature shards mirror the
validated shards (same names, same patients, no patient in two shards), and the spec/schema/summary JSON
files are written and agree with the shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from clinrisk.config import load_config

N_SHARDS = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from clinrisk.features_stage import build_features_dataset
    from clinrisk.generate import generate_dataset
    from clinrisk.validate import validate_dataset

    root = tmp_path_factory.mktemp("gen_int")
    cfg = load_config(
        None,
        [
            "generate.n_patients=600",
            f"generate.n_shards={N_SHARDS}",
            "generate.block_size=150",
            "run.seed=11",
        ],
    )
    generate_dataset(cfg, root / "raw", workers=1, progress=False)
    validate_dataset(cfg, root / "raw", root, workers=1)
    build_features_dataset(cfg, root / "validated", root / "features", root / "raw" / "truth", workers=1)
    return {"root": root, "features": root / "features", "validated": root / "validated"}


def _shards(d: Path) -> list[Path]:
    return sorted(d.glob("shard=*/part.parquet"))


def test_metadata_files_written_and_consistent(run: dict[str, Path]) -> None:
    from clinrisk.features import FeatureSpec, feature_layout

    feat = run["features"]
    spec = FeatureSpec.from_json(feat / "feature_spec.json")
    assert spec.feature_names == list(feature_layout(spec.window_years, spec.locf))
    assert spec.window_years == 3 and spec.horizon_years == 3
    assert set(spec.categories) >= {"sex", "ethnicity", "other_dx_code"}
    assert all(levels[-1] == "__OTHER__" for levels in spec.categories.values())
    schema = json.loads((feat / "feature_schema.json").read_text())
    assert schema  # pandera schema as JSON
    summary = json.loads((feat / "summary.json").read_text())
    assert summary["n_features"] == len(spec.feature_names) and summary["with_truth"] is True
    assert summary["rows"] == sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in _shards(feat))
    assert summary["per_split"]["train"]["rows"] > 0


def test_schema_passes_on_every_shard(run: dict[str, Path]) -> None:
    from clinrisk.feature_schema import validate_features
    from clinrisk.features import FeatureSpec

    spec = FeatureSpec.from_json(run["features"] / "feature_spec.json")
    for f in _shards(run["features"]):
        df = pl.read_parquet(f)
        assert df.height > 0
        validate_features(df, spec, where=str(f))  # raises on any violation
        assert not [c for c in spec.feature_names if c.startswith("eval_")]
        assert "eval_label_true" in df.columns  # truth attached for evaluation only


def test_feature_shards_mirror_validated_shards(run: dict[str, Path]) -> None:
    feat, val = _shards(run["features"]), _shards(run["validated"])
    assert [f.parent.name for f in feat] == [f.parent.name for f in val]
    assert len(feat) == N_SHARDS
    seen: set[int] = set()
    for f, v in zip(feat, val, strict=True):
        fp = set(pl.read_parquet(f, columns=["patient_id"])["patient_id"].to_list())
        vp = set(pl.read_parquet(v, columns=["patient_id"])["patient_id"].to_list())
        assert fp and fp <= vp  # eligible rows only, never a patient from another shard
        assert not fp & seen
        seen |= fp
        keys = pl.read_parquet(f, columns=["patient_id", "year"])
        assert keys.is_duplicated().sum() == 0
        assert keys.equals(keys.sort("patient_id", "year"))
