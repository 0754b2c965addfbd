"""One error path (issue 18 item 3): every expected failure is one `error: <what>, <which file>` line and exit 2;
a bug is one line and exit 1, with its traceback only under `--debug`.

Each scenario of the issue is here: a truncated or mistyped Parquet file in `features`, `train` and `evaluate`;
an output dir that is a file, read-only or under /proc; a corrupt mlflow.db; a corrupt request-log part in
`drift`; a truncated model.txt in `evaluate` and `register` (in a subprocess: LightGBM's parser aborts the
process natively on such a file, which only the bundle's hash check before parsing prevents).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from clinrisk.cli.app import build_app
from clinrisk.io import list_shards
from tests.cli.conftest import REPO, TINY

SETS = ["--set", "run.workers=1"]


def invoke(*args: object) -> tuple[int, list[str], str]:
    """Run the CLI in-process; returns (exit code, the `error:` lines, the whole output)."""
    res = CliRunner().invoke(build_app(), [str(a) for a in args])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    return res.exit_code, errors, res.output


def run_cli(
    *args: object, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter (native crashes and process-wide state are real there)."""
    return subprocess.run(
        [sys.executable, "-m", "clinrisk", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def assert_one_error(code: int, errors: list[str], output: str, *needles: str) -> None:
    assert code == 2, output[-3000:]
    assert len(errors) == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def copy_tree(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


# ------------------------------------------------------------------------------------------ Parquet inputs


def test_features_on_a_truncated_validated_shard_names_the_file(small_run: Path, tmp_path: Path) -> None:
    validated = copy_tree(small_run / "validated", tmp_path / "validated")
    bad = list_shards(validated)[1]
    truncate(bad)
    code, errors, out = invoke(
        "features", "--config", TINY, *SETS, "--validated", validated, "--out", tmp_path / "features"
    )
    assert_one_error(code, errors, out, str(bad), "not a readable Parquet file")
    assert not (tmp_path / "features").exists()


def test_features_on_a_mistyped_validated_shard_names_file_and_column(
    small_run: Path, tmp_path: Path
) -> None:
    validated = copy_tree(small_run / "validated", tmp_path / "validated")
    bad = list_shards(validated)[0]
    df = pl.read_parquet(bad)
    df.with_columns(pl.col("hba1c_value").cast(pl.String)).write_parquet(bad)
    code, errors, out = invoke(
        "features", "--config", TINY, *SETS, "--validated", validated, "--out", tmp_path / "features"
    )
    assert_one_error(code, errors, out, str(bad), "'hba1c_value'", "String")


def test_features_on_a_file_that_is_not_parquet(small_run: Path, tmp_path: Path) -> None:
    validated = copy_tree(small_run / "validated", tmp_path / "validated")
    bad = list_shards(validated)[0]
    bad.write_text("patient_id,year\n1,2010\n")  # a CSV saved under the Parquet name
    code, errors, out = invoke(
        "features", "--config", TINY, *SETS, "--validated", validated, "--out", tmp_path / "features"
    )
    assert_one_error(code, errors, out, str(bad))


def test_train_on_a_truncated_features_shard_names_the_file(features_dir: Path, tmp_path: Path) -> None:
    feats = copy_tree(features_dir, tmp_path / "features")
    bad = list_shards(feats)[2]
    truncate(bad)
    code, errors, out = invoke("train", "--features", feats, "--out", tmp_path / "bundle", *SETS)
    assert_one_error(code, errors, out, str(bad), "not a readable Parquet file")
    assert not (tmp_path / "bundle").exists()


def test_train_on_a_mistyped_features_shard_names_file_and_column(features_dir: Path, tmp_path: Path) -> None:
    feats = copy_tree(features_dir, tmp_path / "features")
    bad = list_shards(feats)[0]
    pl.read_parquet(bad).with_columns(pl.col("bmi").cast(pl.String)).write_parquet(bad)
    code, errors, out = invoke("train", "--features", feats, "--out", tmp_path / "bundle", *SETS)
    assert_one_error(code, errors, out, str(bad), "'bmi'", "expected Float32")


def test_evaluate_on_truncated_and_mistyped_features(
    features_dir: Path, bundle_dir: Path, tmp_path: Path
) -> None:
    feats = copy_tree(features_dir, tmp_path / "features")
    bad = list_shards(feats)[1]
    original = bad.read_bytes()
    truncate(bad)
    args = ("evaluate", "--bundle", bundle_dir, "--features", feats, "--out", tmp_path / "eval", *SETS)
    code, errors, out = invoke(*args)
    assert_one_error(code, errors, out, str(bad), "not a readable Parquet file")
    bad.write_bytes(original)
    pl.read_parquet(bad).with_columns(pl.col("split").to_physical().cast(pl.Int8)).write_parquet(bad)
    code, errors, out = invoke(*args)
    assert_one_error(code, errors, out, str(bad), "'split'")
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------- output dirs


def test_output_dir_that_is_a_file(features_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    code, errors, out = invoke("train", "--features", features_dir, "--out", blocker / "bundle", *SETS)
    assert_one_error(code, errors, out, str(blocker), "is a file, not a directory")
    code, errors, out = invoke("train", "--features", features_dir, "--out", blocker, *SETS)
    assert_one_error(code, errors, out, str(blocker), "is a file")


def test_output_dir_under_proc(features_dir: Path) -> None:
    target = Path("/proc/clinrisk-no-such-dir/bundle")
    code, errors, out = invoke("train", "--features", features_dir, "--out", target, *SETS)
    assert_one_error(code, errors, out, "/proc/clinrisk-no-such-dir")


def test_run_output_dir_under_a_file_in_config(features_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, errors, out = invoke(
        "evaluate", "--features", features_dir, "--set", f"run.output_dir={blocker}", *SETS
    )
    assert_one_error(code, errors, out, str(blocker), "not a directory")


def test_read_only_output_dir(features_dir: Path, tmp_path: Path) -> None:
    """A folder the user may not write: as root the kernel would allow it, so the CLI runs as `nobody`."""
    ro = Path("/tmp") / f"clinrisk-ro-{os.getpid()}"
    ro.mkdir(mode=0o755, exist_ok=True)
    try:
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("root without setpriv: cannot drop privileges to test a read-only folder")
            os.chmod(ro, 0o555)
            probe = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                 "import clinrisk"], capture_output=True, text=True, cwd="/tmp",
            )  # fmt: skip
            if probe.returncode != 0:
                pytest.skip(f"nobody cannot import clinrisk here: {probe.stderr[-300:]}")
            proc = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "clinrisk",
                 "validate", "--config", str(TINY), "--raw", str(ro / "raw"), "--out", str(ro / "run")],
                capture_output=True, text=True, cwd="/tmp", timeout=300,
            )  # fmt: skip
        else:
            os.chmod(ro, 0o555)
            proc = run_cli("validate", "--config", TINY, "--raw", ro / "raw", "--out", ro / "run")
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert_one_error(proc.returncode, errors, proc.stderr, str(ro), "ermission denied")
    finally:
        os.chmod(ro, 0o755)
        shutil.rmtree(ro, ignore_errors=True)


# ---------------------------------------------------------------------------------------- tracking store


def _store(root: Path) -> Path:
    db = root / "default" / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True)
    return db


def test_corrupt_mlflow_db_is_named(tmp_path: Path, bundle_dir: Path) -> None:
    db = _store(tmp_path)
    db.write_bytes(b"this is not a database" * 100)
    for cmd in (
        ["promote"],
        ["storage-uri", "models:/clinrisk@challenger"],
        ["register", "--bundle", str(bundle_dir)],
        ["drift", "--log", str(tmp_path / "log")],
        ["pipeline", "run"],  # before any task starts
    ):
        code, errors, out = invoke(*cmd, "--set", f"run.output_dir={tmp_path}")
        assert_one_error(code, errors, out, str(db), "not an SQLite database")


def test_sqlite_file_with_corrupt_pages_is_named(tmp_path: Path) -> None:
    """A real SQLite header over garbage: the driver's error, named with the store, not a SQLAlchemy traceback."""
    db = _store(tmp_path)
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    code, errors, out = invoke("promote", "--set", f"run.output_dir={tmp_path}")
    assert_one_error(code, errors, out, "MLflow store", str(db))


# -------------------------------------------------------------------------------------------- drift log


def test_drift_on_a_corrupt_request_log_part_names_it(bundle_dir: Path, tmp_path: Path) -> None:
    bundle = bundle_dir
    part = tmp_path / "log" / "date=2026-01-01" / "part-0001.parquet"
    part.parent.mkdir(parents=True)
    pl.DataFrame({"x": list(range(100))}).write_parquet(part)
    truncate(part)
    code, errors, out = invoke(
        "drift", "--bundle", bundle, "--log", tmp_path / "log", "--out", tmp_path / "drift", "--no-mlflow"
    )
    assert_one_error(code, errors, out, str(part), "not a readable Parquet file")


# ---------------------------------------------------------------------------------------- model.txt


@pytest.mark.parametrize("command", ["evaluate", "register"])
def test_truncated_model_txt_is_one_line_not_a_native_crash(
    command: str, bundle_dir: Path, features_dir: Path, tmp_path: Path
) -> None:
    bundle = copy_tree(bundle_dir, tmp_path / "bundle")
    truncate(bundle / "model.txt")
    args: list[object] = [command, "--bundle", bundle, "--set", f"run.output_dir={tmp_path / 'out'}"]
    if command == "evaluate":
        args += ["--features", features_dir, "--out", tmp_path / "eval"]
    proc = run_cli(*args)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])  # not -6 (SIGABRT) / -11 (SIGSEGV)
    assert len(errors) == 1 and "bundle file model.txt" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "default" / "mlflow" / "mlflow.db").exists()


# ------------------------------------------------------------------------------------------ bugs, --debug


def test_a_bug_is_one_line_exit_1_and_its_traceback_only_under_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    import clinrisk.config

    def broken(*_: object, **__: object) -> None:
        raise KeyError("internal-bug")

    monkeypatch.setattr(clinrisk.config, "load_config", broken)
    code, errors, out = invoke("config")
    assert code == 1 and len(errors) == 1 and "Traceback" not in out, out
    assert "unexpected KeyError" in errors[0] and "--debug" in errors[0]
    code, errors, out = invoke("--debug", "config")
    assert code == 1 and "Traceback" in out and "internal-bug" in out, out
    monkeypatch.setenv("CLINRISK_DEBUG", "1")
    code, _, out = invoke("config")
    assert code == 1 and "Traceback" in out


def test_debug_does_not_change_an_expected_error(tmp_path: Path) -> None:
    code, errors, _ = invoke("--debug", "features", "--validated", tmp_path / "missing", *SETS)
    assert code == 2 and errors and "missing" in errors[0]


def test_ctrl_c_is_one_line_exit_130(monkeypatch: pytest.MonkeyPatch) -> None:
    import clinrisk.config

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(clinrisk.config, "load_config", interrupted)
    code, errors, out = invoke("config")
    assert code == 130 and errors == ["error: interrupted"] and "Traceback" not in out, out
