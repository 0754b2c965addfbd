"""Config and input validation close each silent acceptance of issue 18 item 4, and reading commands create
no stores (issue 19)."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from clinrisk.config import load_config
from clinrisk.errors import ConfigError, DataError
from clinrisk.io import list_shards, read_json, write_json
from tests.cli.conftest import TINY, small_run_config
from tests.cli.test_error_path import assert_one_error, invoke, run_cli


@pytest.mark.parametrize(
    "override",
    [
        "generate.gompertz_intercept=.inf",
        "generate.gompertz_intercept=-.inf",
        "generate.gompertz_slope=.nan",
        "train.lambda_l2=.inf",
        "evaluate.slice_auc_delta=.nan",
        "monitoring.psi_feature_bound=.inf",
    ],
)
def test_non_finite_values_are_rejected_at_load(override: str) -> None:
    key = override.split("=", 1)[0]
    try:
        load_config(None, [override])
    except ConfigError as exc:
        assert key in str(exc) and "finite" in str(exc), str(exc)
    else:
        pytest.fail(f"{override} was accepted")


def test_non_finite_generate_value_is_exit_2_not_zero_rows(tmp_path: Path) -> None:
    code, errors, out = invoke(
        "generate", "--config", TINY, "--set", "generate.gompertz_intercept=.inf", "--out", tmp_path / "raw"
    )
    assert code == 2 and errors and "generate.gompertz_intercept" in out, out
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "../escape", "-rf", "x" * 200])
def test_path_like_run_names_are_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match=r"run\.name"):
        load_config(None, [f"run.name={name}"])
    with pytest.raises(ConfigError, match=r"tracking\.registered_model_name"):
        load_config(None, [f"tracking.registered_model_name={name}"])


def test_ordinary_run_names_still_work() -> None:
    for name in ("default", "exp-1.2_b", "_v2"):
        assert load_config(None, [f"run.name={name}"]).run.name == name


def test_outside_the_repository_the_builtin_config_is_announced_once(tmp_path: Path) -> None:
    proc = run_cli("config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    notes = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(notes) == 1 and "built-in defaults" in notes[0] and "clinical" in notes[0], proc.stderr
    proc = run_cli("--usecase", "leads", "config", cwd=tmp_path)
    notes = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 0 and len(notes) == 1 and "'leads'" in notes[0], proc.stderr
    inside = run_cli("config")  # in the repository: configs/default.yaml, no notice
    assert inside.returncode == 0 and "built-in defaults" not in inside.stderr


def test_promote_with_missing_features_dir_is_exit_2(tmp_path: Path) -> None:
    code, errors, out = invoke(
        "promote", "--features", "/nonexistent/features", "--set", f"run.output_dir={tmp_path}"
    )
    assert_one_error(code, errors, out, "/nonexistent/features")


@pytest.mark.parametrize(
    "command",
    [["promote"], ["storage-uri", "models:/clinrisk@challenger"], ["drift"], ["retrain-if-drifted"]],
)
def test_reading_commands_do_not_create_a_store(command: list[str], tmp_path: Path) -> None:
    code, errors, out = invoke(*command, "--set", f"run.output_dir={tmp_path}")
    assert_one_error(code, errors, out, "no MLflow store", str(tmp_path))
    assert not list(tmp_path.rglob("mlflow.db"))


def test_serve_model_uri_from_another_folder_creates_no_store(tmp_path: Path) -> None:
    proc = run_cli("serve", "--model-uri", "models:/clinrisk@challenger", cwd=tmp_path)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert_one_error(proc.returncode, errors, proc.stderr, "no MLflow store")
    assert not (tmp_path / "outputs").exists(), list(tmp_path.rglob("*"))


# ---------------------------------------------------------------------------------------- data inputs


def test_duplicate_validated_rows_are_rejected_before_features(small_run: Path, tmp_path: Path) -> None:
    validated = Path(shutil.copytree(small_run / "validated", tmp_path / "validated"))
    bad = list_shards(validated)[0]
    df = pl.read_parquet(bad)
    pl.concat([df, df.head(3)]).sort("patient_id", "year").write_parquet(bad)
    code, errors, out = invoke(
        "features",
        "--config",
        TINY,
        "--set",
        "run.workers=1",
        "--validated",
        validated,
        "--out",
        tmp_path / "f",
    )
    assert_one_error(code, errors, out, str(bad), "patient_id, year")
    assert not (tmp_path / "f").exists()


def test_validate_checks_the_raw_files_against_the_manifest(small_run: Path, tmp_path: Path) -> None:
    raw = Path(shutil.copytree(small_run / "raw", tmp_path / "raw"))
    manifest = read_json(raw / "manifest.json")
    assert manifest["observed_hash"] and manifest["files_sha256"]
    cfg_args = ("--config", TINY, "--set", "run.workers=1", "--raw", raw)
    code, _, out = invoke("validate", *cfg_args, "--out", tmp_path / "ok")
    assert code == 0, out
    assert read_json(tmp_path / "ok" / "validation" / "report.json")["raw_manifest"]["files_verified"] is True
    # the same number of rows, one value changed: only the hash can tell
    bad = list_shards(raw / "observed")[1]
    df = pl.read_parquet(bad)
    df.with_columns(pl.col("sbp_mmhg").fill_null(120) + 1).write_parquet(bad)
    code, errors, out = invoke("validate", *cfg_args, "--out", tmp_path / "changed")
    assert_one_error(code, errors, out, str(bad), "observed_hash")
    assert not (tmp_path / "changed" / "validated").exists()


def test_manifest_without_file_hashes_is_reported_unverified(small_run: Path, tmp_path: Path) -> None:
    from clinrisk.validate import validate_dataset

    raw = Path(shutil.copytree(small_run / "raw", tmp_path / "raw"))
    manifest = read_json(raw / "manifest.json")
    manifest.pop("files_sha256")
    write_json(raw / "manifest.json", manifest)
    report = validate_dataset(small_run_config(tmp_path), raw, tmp_path / "run", workers=1)
    assert report["raw_manifest"]["files_verified"] is False
    assert (
        "no, the manifest has no file hashes" in (tmp_path / "run" / "validation" / "report.md").read_text()
    )


@pytest.mark.parametrize(("column", "garbage"), [("sex", "???"), ("hba1c_value", "n/a"), ("year", "twenty")])
def test_a_whole_column_of_garbage_is_a_data_error(small_run: Path, column: str, garbage: str) -> None:
    from clinrisk.validate import validate_frame

    raw = pl.read_parquet(list_shards(small_run / "raw" / "observed")[0])
    bad = raw.with_columns(pl.lit(garbage).alias(column))
    with pytest.raises(DataError, match=f"column '{column}': none of its {raw.height} values"):
        validate_frame(bad, 2000, 2023, where="shard=000")


def test_one_garbage_value_is_still_quarantined_not_an_error(small_run: Path) -> None:
    from clinrisk.validate import validate_frame

    raw = pl.read_parquet(list_shards(small_run / "raw" / "observed")[0])
    sex = raw["sex"].cast(pl.String).to_list()
    sex[0] = "???"
    res = validate_frame(raw.with_columns(pl.Series("sex", sex)), 2000, 2023, where="shard=000")
    assert res.quarantine.height >= 1 and "???" in " ".join(res.quarantine["_reason"].to_list())


def test_an_empty_dataset_is_not_validated() -> None:
    from clinrisk.validate import check_report

    cfg = load_config(None, [])
    report = {"rows_in": 0, "quarantine_fraction": 0.0, "failures_by_check": [], "rows_quarantined": 0}
    with pytest.raises(DataError, match="no rows to validate"):
        check_report(cfg, report, {"path": "raw/manifest.json", "content": {"rows": 0}}, "raw/observed")
