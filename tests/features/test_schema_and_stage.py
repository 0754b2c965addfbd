"""Pandera feature schema, the shard/dataset stage (atomic, validated output) and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from clinrisk.cli.app import build_app
from clinrisk.config import load_config
from clinrisk.errors import DataError
from clinrisk.feature_schema import build_feature_schema, validate_features
from clinrisk.features import FeatureSpec
from clinrisk.features_stage import build_features_dataset
from clinrisk.io import list_shards, shard_file
from tests.features.synth import synthetic_raw, synthetic_truth


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("feat")
    for s in range(2):
        raw = synthetic_raw(250, seed=s, id_offset=10_000 * s)
        for name, df in (("validated", raw), ("truth", synthetic_truth(raw, s))):
            f = shard_file(d / name, s)
            f.parent.mkdir(parents=True)
            df.write_parquet(f)
    return d


@pytest.fixture(scope="module")
def built(dataset: Path) -> tuple[Path, dict]:
    cfg = load_config(None, ["split.temporal=false"])
    summary = build_features_dataset(
        cfg, dataset / "validated", dataset / "features", dataset / "truth", workers=1
    )
    return dataset / "features", summary


def test_stage_outputs(built) -> None:
    out, summary = built
    assert len(list_shards(out)) == 2 and len(list_shards(out / "unit_quarantine")) == 2
    spec = FeatureSpec.from_json(out / "feature_spec.json")
    schema_json = json.loads((out / "feature_schema.json").read_text())
    assert set(spec.feature_names) <= set(schema_json["columns"])
    df = pl.read_parquet(list_shards(out))
    assert df.columns[:3] == ["patient_id", "year", "split"]
    assert df.columns[3 : 3 + len(spec.feature_names)] == spec.feature_names
    assert [c for c in df.columns if c.startswith("eval_")] == [
        "eval_label_true",
        "eval_oracle_risk",
        "eval_onset_year",
        "eval_recorded_year",
        "eval_undiagnosed",
    ]
    validate_features(df, spec)
    assert df.select("patient_id", "year").is_unique().all()
    assert summary["rows"] == df.height
    assert sum(v["rows"] for v in summary["per_split"].values()) == df.height
    assert 0 < summary["per_split"]["train"]["prevalence_recorded"] < 1
    assert summary["units"]["glucose"]["present"] > 0
    json.loads((out / "summary.json").read_text())
    q = pl.read_parquet(list_shards(out / "unit_quarantine"))
    assert q.height == summary["unit_quarantine_rows"] > 0
    assert set(q["reason"].unique()) <= {
        "implausible_for_unit",
        "incompatible_unit",
        "ambiguous_missing_unit",
        "implausible_any_unit",
    }


def test_schema_rejects_malformed_frames(built) -> None:
    out, _ = built
    spec = FeatureSpec.from_json(out / "feature_spec.json")
    good = pl.read_parquet(list_shards(out)[0]).drop(
        [c for c in pl.read_parquet_schema(list_shards(out)[0]) if c.startswith("eval_")]
    )
    validate_features(good, spec)
    with pytest.raises(DataError, match="hba1c_mean_3y"):  # wrong dtype
        validate_features(good.with_columns(pl.col("hba1c_mean_3y").cast(pl.Float64)), spec)
    with pytest.raises(DataError, match="hba1c"):  # out of range (a unit error that slipped through)
        validate_features(good.with_columns(pl.lit(48.0, dtype=pl.Float32).alias("hba1c")), spec)
    with pytest.raises(DataError, match="age"):  # missing column
        validate_features(good.drop("age"), spec)
    with pytest.raises(DataError, match="label"):
        validate_features(good.with_columns(pl.lit(2.0, dtype=pl.Float32).alias("label")), spec)
    with pytest.raises(DataError, match="unknown evaluation columns"):
        validate_features(good.with_columns(pl.lit(1).alias("eval_secret")), spec)
    with pytest.raises(DataError):  # unexpected extra column (strict)
        validate_features(good.with_columns(pl.lit(1.0).alias("onset_year")), spec)
    leaky = spec.model_copy(update={"feature_names": [*spec.feature_names, "eval_oracle_risk"]})
    with pytest.raises(DataError, match="eval_oracle_risk"):
        build_feature_schema(leaky)


def test_failed_stage_publishes_nothing(dataset: Path, tmp_path: Path) -> None:
    cfg = load_config(None, ["split.temporal=false"])
    bad = tmp_path / "truth"
    (bad / "shard=000").mkdir(parents=True)

    with pytest.raises(DataError, match="truth shards missing"):
        build_features_dataset(cfg, dataset / "validated", tmp_path / "features", bad, workers=1)
    assert not (tmp_path / "features").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".features")]


def test_building_good_features_never_imports_pandera(dataset: Path, tmp_path: Path) -> None:
    """The features steps validate with one polars pass and call pandera only for a frame that fails it:
    pandera's import (~0.8 s) is paid by the validation steps, not by every feature task process."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from clinrisk.config import load_config\n"
        "from clinrisk.features_stage import build_features_dataset\n"
        f"d = Path({str(dataset)!r})\n"
        "cfg = load_config(None, ['split.temporal=false'])\n"
        f"build_features_dataset(cfg, d / 'validated', Path({str(tmp_path / 'f')!r}), d / 'truth', workers=1)\n"
        "print(sorted(m for m in ('pandera', 'pandas') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_workers_give_identical_output(dataset: Path, built, tmp_path: Path) -> None:
    out, _ = built
    cfg = load_config(None, ["split.temporal=false"])
    build_features_dataset(cfg, dataset / "validated", tmp_path / "f2", dataset / "truth", workers=2)
    for a, b in zip(list_shards(out), list_shards(tmp_path / "f2"), strict=True):
        assert pl.read_parquet(a).equals(pl.read_parquet(b))


def test_cli_features(dataset: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        build_app(),
        [
            "features",
            "--set",
            "split.temporal=false",
            "--set",
            "labels.strategy=E2",
            "--validated",
            str(dataset / "validated"),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    brief = json.loads(res.output)
    assert brief["with_truth"] is False and brief["n_features"] >= 100
    df = pl.read_parquet(list_shards(tmp_path / "out"))
    assert not [c for c in df.columns if c.startswith("eval_")]
    res = CliRunner().invoke(
        build_app(), ["features", "--validated", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]
    )
    assert res.exit_code == 2 and "dataset directory not found" in res.output
