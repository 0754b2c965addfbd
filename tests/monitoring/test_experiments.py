"""Experiment suites: parsing/expansion, and comparison reports on constructed prediction files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clinrisk.errors import ConfigError
from clinrisk.experiments import compare_runs, expand_runs, load_suite

SUITES = Path(__file__).resolve().parents[2] / "configs" / "experiments"


def _preds(n_pat: int, years: int, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_pat), years)
    year = np.tile(np.arange(2019, 2019 + years), n_pat)
    risk = 1 / (1 + np.exp(-(rng.normal(-2.6, 1.1, n_pat)[pid] + rng.normal(0, 0.3, pid.size))))
    y_true = (rng.random(pid.size) < risk).astype(np.int8)
    y_rec = (y_true & (rng.random(pid.size) < 0.8)).astype(np.int8)  # delayed coding loses positives
    base = pl.DataFrame(
        {
            "patient_id": pid.astype(np.int64),
            "year": year.astype(np.int16),
            "label_rec": y_rec,
            "eval_label_true": y_true,
        }
    )
    return base, risk


def _write(tmp: Path, name: str, base: pl.DataFrame, p: np.ndarray) -> str:
    f = tmp / f"{name}.parquet"
    base.with_columns(pl.Series("probability", np.clip(p, 1e-6, 1 - 1e-6))).write_parquet(f)
    return str(f)


def _suite(rule: dict, arms: list[str]) -> dict:
    return {
        "name": "t",
        "runs": [{"name": a, "key_change": f"change {a}", "overrides": []} for a in arms],
        "baseline": arms[0],
        "winner": rule,
    }


def test_suite_files_parse_and_expand() -> None:
    unc = load_suite(SUITES / "uncertainty.yaml")
    runs = expand_runs(unc, ["generate.n_patients=500"])
    assert len(runs) == 4 * 3
    e2_none = next(r for r in runs if r["name"] == "E2@none")
    assert e2_none["baseline"] == "E0@none"
    # later overrides win: the caller's scale knob is last, the misspecified pmf overrides the cell's
    assert e2_none["overrides"][-1] == "generate.n_patients=500"
    mis = next(r for r in runs if r["name"] == "E2_mis@severe")["overrides"]
    assert mis.index("labels.assumed_delay_pmf=[0.05,0.75,0.15,0.05,0.0]") > mis.index(
        "labels.assumed_delay_pmf=[0.05,0.15,0.25,0.25,0.30]"
    )
    win = load_suite(SUITES / "window.yaml")
    assert win.winner.rule == "one_se" and len(expand_runs(win)) == 8
    sel = load_suite(SUITES / "selection.yaml")
    assert [r.name for r in sel.runs] == ["full", "filtered", "stability"]
    from clinrisk.config import load_config

    for suite in (unc, win, sel):  # every override is a valid config key/value
        for r in expand_runs(suite):
            load_config(None, r["overrides"])


def test_suite_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nruns: [{name: a}]\nbaseline: b\n")
    with pytest.raises(ConfigError, match="baseline"):
        load_suite(bad)
    bad.write_text("name: x\nruns: [{name: a, typo: 1}]\nbaseline: a\n")
    with pytest.raises(ConfigError, match="typo"):
        load_suite(bad)


def test_compare_runs_best_with_ci(tmp_path: Path) -> None:
    base, risk = _preds(3000, 2, 0)
    rng = np.random.default_rng(5)
    logit = np.log(risk / (1 - risk))
    naive = 1 / (1 + np.exp(-(logit - 0.5 + rng.normal(0, 0.8, risk.size))))  # noisy, under-predicting
    good = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.3, risk.size))))
    runs = [
        {
            "name": "E0",
            "arm": "E0",
            "cell": None,
            "order": 0,
            "baseline": "E0",
            "is_baseline": True,
            "key_change": "naive",
            "status": "ok",
            "predictions": _write(tmp_path, "E0", base, naive),
            "mlflow_run_id": "abc",
            "peak_rss_mb": 321.0,
        },
        {
            "name": "E2",
            "arm": "E2",
            "cell": None,
            "order": 1,
            "baseline": "E0",
            "is_baseline": False,
            "key_change": "soft labels",
            "status": "ok",
            "predictions": _write(tmp_path, "E2", base, good),
        },
        {
            "name": "E0dup",
            "arm": "E0dup",
            "cell": None,
            "order": 2,
            "baseline": "E0",
            "is_baseline": False,
            "key_change": "same model",
            "status": "ok",
            "predictions": _write(tmp_path, "dup", base, naive),
        },
        {
            "name": "broken",
            "arm": "broken",
            "cell": None,
            "order": 3,
            "baseline": "E0",
            "is_baseline": False,
            "key_change": "crashed",
            "status": "failed",
            "error": "StageError: boom",
        },
    ]
    res = {
        "suite": _suite(
            {"rule": "best_with_ci", "metric": "brier", "labels": "true"}, ["E0", "E2", "E0dup", "broken"]
        ),
        "p_t": 0.1,
        "suite_dir": str(tmp_path),
        "runs": runs,
    }
    rep = compare_runs(res, n_boot=100)
    rows = {r["name"]: r for r in rep["runs"]}
    d = rows["E2"]["delta"]["true"]["brier"]
    assert d["hi"] < 0 and d["diff"] == pytest.approx(
        rows["E2"]["metrics"]["true"]["brier"] - rows["E0"]["metrics"]["true"]["brier"]
    )
    assert rows["E0dup"]["delta"]["true"]["brier"]["diff"] == 0.0
    assert rep["winners"][0]["winner"] == "E2"
    md = Path(rep["files"]["markdown"]).read_text()
    assert "soft labels" in md and "**E2**" in md and "StageError: boom" in md and "`abc`" in md
    saved = json.loads(Path(rep["files"]["json"]).read_text())
    assert saved["winner_rule"]["rule"] == "best_with_ci" and saved["runs"][0]["peak_rss_mb"] == 321.0


def test_compare_runs_refuses_unpaired_data_and_keeps_baseline(tmp_path: Path) -> None:
    base, risk = _preds(800, 2, 1)
    other, _ = _preds(800, 2, 2)  # different labels on the same (patient, year) keys
    runs = [
        {
            "name": "A",
            "arm": "A",
            "cell": None,
            "order": 0,
            "baseline": "A",
            "is_baseline": True,
            "status": "ok",
            "predictions": _write(tmp_path, "A", base, risk),
        },
        {
            "name": "B",
            "arm": "B",
            "cell": None,
            "order": 1,
            "baseline": "A",
            "is_baseline": False,
            "status": "ok",
            "predictions": _write(tmp_path, "B", other, risk),
        },
    ]
    res = {
        "suite": _suite({"rule": "best_with_ci", "metric": "ap"}, ["A", "B"]),
        "p_t": 0.1,
        "suite_dir": str(tmp_path),
        "runs": runs,
    }
    rep = compare_runs(res, n_boot=20)
    assert "differs between the runs" in rep["runs"][1]["delta"]["error"]
    assert rep["winners"][0]["winner"] == "A"


def test_one_se_rule_prefers_simpler(tmp_path: Path) -> None:
    base, risk = _preds(2000, 2, 3)
    rng = np.random.default_rng(9)
    logit = np.log(risk / (1 - risk))
    noise = rng.normal(0, 1, risk.size)

    def model(s: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(logit + s * noise)))

    arms = ["X1", "X2", "X3", "X5"]
    scales = {"X1": 2.0, "X2": 0.32, "X3": 0.3, "X5": 0.29}  # X2, X3, X5 practically equal; X1 far worse
    runs = [
        {
            "name": a,
            "arm": a,
            "cell": None,
            "order": i,
            "baseline": "X3",
            "is_baseline": a == "X3",
            "status": "ok",
            "predictions": _write(tmp_path, a, base, model(scales[a])),
        }
        for i, a in enumerate(arms)
    ]
    suite = _suite({"rule": "one_se", "metric": "ap", "labels": "true", "split": "test"}, arms)
    suite["baseline"] = "X3"
    rep = compare_runs({"suite": suite, "p_t": 0.1, "suite_dir": str(tmp_path), "runs": runs}, n_boot=100)
    w = rep["winners"][0]
    assert w["winner"] == "X2", w["reason"]
    assert w["per_run"]["X1"]["value"] < w["bound"]


def test_run_suite_resume_reruns_only_failed_or_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--resume keeps runs that finished ok with the same effective overrides; reruns failed/changed ones."""
    import clinrisk.experiments as X

    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: s\nruns:\n  - {name: A, overrides: [labels.strategy=E0]}\n"
        "  - {name: B, overrides: [labels.strategy=E2]}\nbaseline: A\n"
    )
    base, risk = _preds(50, 2, 0)
    calls: list[str] = []

    def fake(fail: set[str]):
        def run(_base: object, overrides: list[str], _runner: str) -> dict:
            arm = "A" if "labels.strategy=E0" in overrides else "B"
            calls.append(arm)
            if arm in fail:
                raise RuntimeError(f"{arm} broke")
            return {"predictions": _write(tmp_path, f"{arm}{len(calls)}", base, risk), "mlflow_run_id": arm}

        return run

    sets = ["tracking.tracking_uri=sqlite:///unused.db"]  # a user store: no suite store is prepared
    monkeypatch.setattr(X, "_run_locally", fake({"B"}))
    first = X.run_suite(suite, extra_overrides=sets, out_dir=tmp_path / "out")
    assert [r["status"] for r in first["runs"]] == ["ok", "failed"] and calls == ["A", "B"]
    monkeypatch.setattr(X, "_run_locally", fake(set()))
    second = X.run_suite(suite, extra_overrides=sets, out_dir=tmp_path / "out", resume=True)
    assert calls == ["A", "B", "B"]  # only the failed run ran again
    assert [r["status"] for r in second["runs"]] == ["ok", "ok"] and second["runs"][0].get("resumed")
    assert second["runs"][0]["predictions"] == first["runs"][0]["predictions"]
    # a changed scale knob changes the effective overrides: nothing is reused
    X.run_suite(
        suite, extra_overrides=[*sets, "generate.n_patients=700"], out_dir=tmp_path / "out", resume=True
    )
    assert calls == ["A", "B", "B", "A", "B"]
    # without --resume everything runs
    X.run_suite(suite, extra_overrides=sets, out_dir=tmp_path / "out")
    assert calls[-2:] == ["A", "B"] and len(calls) == 7


def test_locate_outputs_picks_the_merged_features_not_the_bare_spec(tmp_path: Path) -> None:
    """kfp.local layout: fit-feature-spec writes a bare feature_spec.json; the features dataset is the one
    with shard=NNN directories (merge-features), which validation scoring must read."""
    from clinrisk.experiments import locate_outputs

    root = tmp_path / "clinrisk-training-x"
    for d in (
        "fit-feature-spec/feature_spec",
        "merge-features/features/shard=000",
        "train/bundle",
        "evaluate/evaluation",
    ):
        (root / d).mkdir(parents=True)
    (root / "fit-feature-spec/feature_spec/feature_spec.json").write_text("{}")
    (root / "merge-features/features/feature_spec.json").write_text("{}")
    (root / "train/bundle/model.txt").write_text("")
    (root / "evaluate/evaluation/predictions.parquet").write_text("")
    out = locate_outputs(root)
    assert out["features_dir"] == str(root / "merge-features/features")
    assert out["bundle_dir"] == str(root / "train/bundle")
    assert out["predictions"] == str(root / "evaluate/evaluation/predictions.parquet")


def test_selection_step_numbers_reported(tmp_path: Path) -> None:
    """A run whose selection failed its non-inferiority check is reported as trained on all features."""
    from clinrisk.experiments import render_comparison, selection_summary

    f = tmp_path / "selected_features.json"
    f.write_text(
        json.dumps(
            {
                "enabled": True,
                "n_features_before": 156,
                "n_features_selected": 3,
                "selected": ["a", "b", "c"],
                "evaluation": {
                    "delta_ap": -0.09,
                    "delta_brier": 0.003,
                    "acceptable": False,
                    "validation_rows": 538,
                },
                "resources": {"peak_rss_mb": 280.0, "wall_s": 43.5},
            }
        )
    )
    s = selection_summary(str(f))
    assert s is not None and s["n_features_selected"] == 3
    assert s["acceptable"] is False and s["used_for_training"] is False
    off = tmp_path / "off.json"
    off.write_text(json.dumps({"enabled": False, "n_features_before": 156, "selected": ["a"]}))
    assert selection_summary(str(off)) is None and selection_summary(None) is None
    report = {
        "suite": "selection",
        "p_t": 0.1,
        "bootstrap_replicates": 10,
        "ci_level": 0.95,
        "winner_rule": {"statement": "x"},
        "winners": [],
        "runs": [{"name": "stability", "is_baseline": False, "status": "ok", "selection": s}],
    }
    md = render_comparison(report)
    assert (
        "## Feature selection step" in md
        and "| stability | 156 → 3 | -0.0900 | +0.00300 | 538 | False | False |" in md
    )
