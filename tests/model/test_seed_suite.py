"""Multi-seed uncertainty suite (issue 16): the summary's statistics and rule on synthetic predictions,
bad input as one line + exit 2, and one tiny end-to-end run through the real data path and learner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clinrisk.errors import DataError
from clinrisk.seed_suite import SuiteSettings, check_paired, gap_closed, load_predictions, main, summarise


def _write_seed(root: Path, seed: int, n_patients: int = 2000, e2_share: float = 0.8) -> None:
    """Synthetic test predictions of every arm: truth risk p, y ~ Bernoulli(p); E0 under-predicts by a
    factor 0.5, C is near-calibrated, E2 sits e2_share of the way from E0 to C."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_patients), 3)
    year = np.tile(np.arange(2015, 2018), n_patients).astype(np.int16)
    p = rng.beta(1, 9, size=pid.size)
    y = (rng.random(pid.size) < p).astype(np.int8)
    d = root / f"seed={seed}"
    d.mkdir(parents=True)
    base = pl.DataFrame({"patient_id": pid, "year": year, "eval_label_true": y, "eval_oracle_risk": p})
    c = np.clip(p + rng.normal(0, 0.02, p.size), 1e-4, 1 - 1e-4)
    e0 = 0.5 * c
    arms = {"E0": e0, "C": c, "E2": e0 + e2_share * (c - e0), "E1b": 0.8 * c}
    for arm, risk in arms.items():
        for k in (1, 2):
            jitter = np.clip(risk * (1 + rng.normal(0, 0.01, p.size)), 1e-4, 1 - 1e-4)
            base.with_columns(pl.Series("probability", jitter)).write_parquet(d / f"{arm}_lgb{k}.parquet")
    base.with_columns(pl.Series("probability", p)).write_parquet(d / "A.parquet")
    base.with_columns(pl.Series("probability", np.clip(p * 0.95, 0, 1))).write_parquet(d / "B.parquet")


def _settings(n: int = 5, **kw) -> SuiteSettings:
    return SuiteSettings(generator_seeds=list(range(n)), n_boot=200, **kw)


def test_summary_statistics_and_rule(tmp_path: Path) -> None:
    for s in range(5):
        _write_seed(tmp_path, s)
    out = summarise(tmp_path, _settings())
    assert out["generator_seeds"] == [0, 1, 2, 3, 4]
    assert out["lgb_seeds_per_arm"] == {"E0": 2, "E1b": 2, "E2": 2, "C": 2}
    for s, f in out["fraction_closed"].items():
        # E2 = E0 + 0.8 (C − E0) in risk: Brier is quadratic, so the share closed is 1 − 0.2² = 0.96 in
        # expectation of the squared bias part; it must be large, with a CI above 0
        assert 0.7 < f["fraction_closed"] < 1.1, (s, f)
        assert f["lo"] > 0 and f["lo"] <= f["fraction_closed"] <= f["hi"]
        assert f["delta_excess_brier_hi"] < 0 and f["delta_brier_hi"] < 0 and f["gap_resolved"]
    assert out["winner"] == "E2" and out["wins"] == 5
    assert out["goals"]["e2_closes_gap"]["met"]
    a = out["arms"]["A"]
    assert a["excess_brier"]["mean"] == 0.0  # tier A against itself
    assert out["arms"]["E0"]["oe"]["mean"] > 1.8  # under-prediction shows as O/E > 1
    # against tier A's risk (no label draw): E0 = 0.5·C, so Σp/Σp̂ ≈ 2; tier A is 1 by definition
    assert out["arms"]["E0"]["oe_expected"]["mean"] == pytest.approx(2.0, rel=0.05)
    assert out["arms"]["A"]["oe_expected"]["mean"] == pytest.approx(1.0)
    assert not out["goals"]["oe_in_band"]["met_by_winner"] or out["winner"] != "E0"
    assert out["arms"]["E0"]["auc"]["sd"] > 0  # between-seed SD over 5 seeds


def test_rule_keeps_e0_when_e2_does_not_help(tmp_path: Path) -> None:
    for s in range(5):
        _write_seed(tmp_path, s, e2_share=0.0)
    out = summarise(tmp_path, _settings())
    assert out["winner"] == "E0"
    assert not out["goals"]["e2_closes_gap"]["met"]


def test_unresolved_gap_reports_no_share_and_rule_uses_paired_difference(tmp_path: Path) -> None:
    """Tier C no better than E0 (the seed-13 case): the share's denominator is noise, so no share is
    reported, while the paired excess-Brier difference still decides the seed."""
    _write_seed(tmp_path, 3)
    arms = load_predictions(tmp_path)[3]
    arms["C"] = [f.clone() for f in arms["E0"]]
    f = gap_closed(arms, n_boot=200, seed=1, ci_level=0.95)
    assert not f["gap_resolved"] and np.isnan(f["fraction_closed"]) and np.isnan(f["lo"])
    assert f["gap_lo"] <= 0 <= f["gap_hi"]
    assert f["delta_excess_brier_hi"] < 0  # E2 still better than E0: a win under the rule


def test_gap_closed_ci_covers_point(tmp_path: Path) -> None:
    _write_seed(tmp_path, 7)
    arms = load_predictions(tmp_path)[7]
    f = gap_closed(arms, n_boot=300, seed=1, ci_level=0.9)
    assert f["lo"] < f["fraction_closed"] < f["hi"]
    assert f["test_patients"] == 2000 and f["test_rows"] == 6000


def test_unpaired_arms_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for s in range(5):
        _write_seed(tmp_path, s)
    f = tmp_path / "seed=3" / "E2_lgb1.parquet"
    pl.read_parquet(f).head(5000).write_parquet(f)  # an arm scored on fewer rows
    with pytest.raises(DataError, match="arms not paired on the same rows"):
        load_predictions(tmp_path)
    rc = main(["--summarise-only", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("error: ") and "not paired" in err


def test_check_paired_catches_different_labels(tmp_path: Path) -> None:
    _write_seed(tmp_path, 1)
    arms = load_predictions(tmp_path)[1]
    arms["E2"][0] = arms["E2"][0].with_columns((1 - pl.col("eval_label_true")).alias("eval_label_true"))
    with pytest.raises(DataError, match="E2"):
        check_paired(arms, where="x")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--seeds", "1,2,3,4"], "--seeds: 4 generator seed(s) is too short for the rule"),
        (["--seeds", "1,2,3,4,5", "--calibration", "platt"], "--calibration: unknown method 'platt'"),
        (["--seeds", "1,1,2,3,4"], "--seeds: repeated generator seed"),
        (["--seeds", "a,b"], "error: arguments:"),
        (["--seeds", "1,2,3,4,5", "--lgb-seeds", ""], "--lgb-seeds"),
        (["--seeds", "1,2,3,4,5", "--min-wins", "6"], "--min-wins"),
    ],
)
def test_bad_input_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    rc = main([*argv, "--out", str(tmp_path / "suite")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and err.startswith("error: ") and needle in err
    assert not (tmp_path / "suite").exists()  # nothing ran


def test_summarise_only_needs_enough_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for s in range(3):
        _write_seed(tmp_path, s)
    rc = main(["--summarise-only", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "too short for the rule" in err
    assert main(["--summarise-only", "--out", str(tmp_path), "--min-seeds", "3", "--min-wins", "2"]) == 0
    assert "Verdict: **E2**" in (tmp_path / "summary.md").read_text()


def test_tiny_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One generator seed × one LightGBM seed at 600 patients through generate → validate → features →
    labels → the learner → calibration: every arm scored on the same test rows, the table printed."""
    out = tmp_path / "suite"
    rc = main(
        [
            "--seeds", "3", "--lgb-seeds", "1", "--patients", "600", "--boot", "20",
            "--min-seeds", "1", "--min-wins", "1", "--out", str(out),
            "--set", "generate.calibration_patients=600", "--set", "generate.n_shards=1",
            "--set", "train.num_boost_round=25",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    files = sorted(p.name for p in (out / "seed=3").glob("*.parquet"))
    assert files == ["A.parquet", "B.parquet", "C_lgb1.parquet", "E0_lgb1.parquet", "E1b_lgb1.parquet",
                     "E2_lgb1.parquet"]  # fmt: skip
    arms = load_predictions(out)[3]  # paired by construction, checked on reading
    n = arms["E0"][0].height
    assert n > 100
    for frames in arms.values():
        p = frames[0]["probability"].to_numpy()
        assert np.all((p >= 0) & (p <= 1))
    # tier B (history only) is not tier A and both beat the trained arms on expected AUC
    assert not np.allclose(arms["A"][0]["probability"].to_numpy(), arms["B"][0]["probability"].to_numpy())
    assert "tier C: same learner on true labels" in printed and "share closed" in printed
    # every trained model is also scored under each fixed calibration map, beta included (issue 16)
    assert "Calibration maps on the same models" in printed
    summary = summarise(out, _settings(1, min_seeds=1, min_wins=1))
    comparison = summary["calibration_comparison"]
    assert set(comparison) == {"E0", "E1b", "E2", "C"}
    for per_method in comparison.values():
        assert {"none", "logistic", "beta"} <= set(per_method)
        assert per_method["beta"]["max_abs_auc_change_vs_none"] < 1e-9  # monotone: ranking kept
        assert per_method["none"]["ap_change_vs_none"] == 0.0
    # --resume reuses a seed finished with the same settings (no retraining) and reruns it otherwise
    before = {p.name: p.stat().st_mtime_ns for p in (out / "seed=3").glob("*.parquet")}
    argv = ["--seeds", "3", "--lgb-seeds", "1", "--patients", "600", "--boot", "20", "--min-seeds", "1",
            "--min-wins", "1", "--out", str(out), "--set", "generate.calibration_patients=600",
            "--set", "generate.n_shards=1", "--set", "train.num_boost_round=25", "--resume"]  # fmt: skip
    assert main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "seed=3").glob("*.parquet")} == before
    assert main([*argv[:-2], "train.num_boost_round=20", "--resume"]) == 0
    assert (out / "seed=3" / "E0_lgb1.parquet").stat().st_mtime_ns != before["E0_lgb1.parquet"]
    capsys.readouterr()


def test_calibration_comparison_on_synthetic_maps(tmp_path: Path) -> None:
    """Suites written before the comparison existed summarise without it; with the columns, a map that
    fixes an under-prediction shows a better O/E and ECE than the uncalibrated scores at the same AUC."""
    from clinrisk.seed_suite import calibration_comparison

    for s in range(5):
        _write_seed(tmp_path, s)
    assert summarise(tmp_path, _settings())["calibration_comparison"] == {}
    seeds = load_predictions(tmp_path)
    for arms in seeds.values():
        for arm in ("E0", "E1b", "E2", "C"):
            arms[arm] = [
                f.with_columns(
                    pl.col("probability").alias("probability_none"),
                    (pl.col("probability") * 2).clip(0, 1).alias("probability_beta"),
                )
                for f in arms[arm]
            ]
    e0 = calibration_comparison(seeds)["E0"]
    assert abs(e0["beta"]["oe"] - 1) < abs(e0["none"]["oe"] - 1)
    assert e0["beta"]["ece"] < e0["none"]["ece"]
    assert e0["beta"]["max_abs_auc_change_vs_none"] < 1e-9
