"""Canary A/B analysis on logged requests, and the drift CLI exit code."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from clinrisk.errors import DataError
from clinrisk.promotion import canary_ab
from clinrisk.request_log import RequestLogger, read_request_log


def test_canary_ab_scores_and_outcomes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 3000
    risk = 1 / (1 + np.exp(-rng.normal(-2.4, 1.0, 2 * n)))
    y = (rng.random(2 * n) < risk).astype(np.int8)
    champ = np.clip(3.0 * risk[:n] * np.exp(rng.normal(0, 1.0, n)), 0, 0.99)  # noisy, over-predicting
    canary = risk[n:]  # the true risk: better AP and Brier
    feats = pl.DataFrame({"age": rng.integers(30, 80, 2 * n)})
    ts = datetime(2025, 1, 1, tzinfo=UTC)
    with RequestLogger(tmp_path) as lg:
        lg.log(feats[:n], champ, "v1", ts, request_ids=[f"a{i}" for i in range(n)])
        lg.log(feats[n:], canary, "v2", ts, request_ids=[f"b{i}" for i in range(n)])
    log = read_request_log(tmp_path)
    outcomes = pl.DataFrame(
        {"request_id": [f"a{i}" for i in range(n)] + [f"b{i}" for i in range(n)], "label": y}
    )
    rep = canary_ab(log, "v1", "v2", outcomes, n_boot=100)
    assert rep["n_requests"] == {"champion": n, "canary": n}
    assert rep["traffic_share_canary"] == pytest.approx(0.5)
    d = rep["canary_minus_champion"]
    assert d["brier"]["hi"] < 0 and d["ap"]["lo"] > 0
    v1 = log.filter(pl.col("model_version") == "v1")
    same = canary_ab(v1.vstack(v1.with_columns(pl.lit("v3").alias("model_version"))), "v1", "v3")
    assert same["score"]["ks"] == 0.0 and same["score"]["psi_canary_vs_champion"] < 0.01
    with pytest.raises(DataError, match="no rows"):
        canary_ab(log, "v1", "nope")


def test_drift_cli_exit_codes(trained_bundle_dir: Path, synthetic_features_dir: Path, tmp_path: Path) -> None:
    from clinrisk.bundle import load_bundle
    from clinrisk.cli.app import build_app
    from clinrisk.evaluate import load_test_frame

    bundle = load_bundle(trained_bundle_dir)
    df = load_test_frame(synthetic_features_dir).with_columns(
        pl.col("bmi") + 6.0, pl.col("hba1c_last_3y") + 1.0, pl.col("hba1c_mean_3y") + 1.0
    )
    with RequestLogger(tmp_path / "log") as lg:
        lg.log(df, bundle.predict_proba(df), bundle.version)
    args = [
        "drift",
        "--bundle",
        str(trained_bundle_dir),
        "--log",
        str(tmp_path / "log"),
        "--out",
        str(tmp_path / "drift"),
        "--no-mlflow",
        "--set",
        f"run.output_dir={tmp_path}",
    ]
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 3, res.output
    assert "retrain" in res.output and (tmp_path / "drift" / "metrics.prom").is_file()
    res2 = CliRunner().invoke(build_app(), [*args[:3], "--log", str(tmp_path / "missing"), *args[5:]])
    assert res2.exit_code == 2 and "not found" in res2.output
