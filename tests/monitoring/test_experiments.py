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
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store)
    client.create_experiment("suite-x", artifact_location=(tmp_path / "artifacts").as_uri())
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
        "tracking_uri": store,
        "experiment": "suite-x",
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
    # The comparison is its own finished run in the suite's experiment, with a page MLflow renders.
    html = Path(rep["files"]["html"]).read_text()
    assert "<table" in html and "E2" in html
    run = client.get_run(rep["mlflow_comparison_run_id"])
    assert run.info.status == "FINISHED" and "E2" in run.data.tags["mlflow.note.content"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "comparison")}
    assert logged == {f"comparison/{f}" for f in ("comparison.json", "comparison.md", "comparison.html")}


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
    """Arms scored on the same patients: the paired SE (shared patient noise cancels) is far smaller than
    each arm's own SE, so an arm 0.002 AP behind the best is no longer "within one SE" (the unpaired rule
    would have admitted it)."""
    base, risk = _preds(2000, 2, 3)
    rng = np.random.default_rng(9)
    logit = np.log(risk / (1 - risk))
    noise = rng.normal(0, 1, risk.size)

    def model(s: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(logit + s * noise)))

    arms = ["X1", "X2", "X3", "X5"]
    scales = {"X1": 2.0, "X2": 0.32, "X3": 0.3, "X5": 0.29}  # X1 far worse; X2 slightly, X3 barely
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
    pr = w["per_run"]
    assert w["best"] == "X5" and w["winner"] == "X3", w["reason"]
    # X2: behind by more than the paired SE, but by far less than the unpaired SE (old rule: X2 wins)
    assert pr["X2"]["se_paired"] < pr["X2"]["gap"] < pr["X5"]["se_unpaired"]
    assert pr["X2"]["se_paired"] < 0.2 * pr["X2"]["se_unpaired"]
    assert not pr["X1"]["eligible"] and not pr["X2"]["eligible"] and pr["X3"]["eligible"]
    assert pr["X3"]["diff_vs_best"] == pytest.approx(pr["X3"]["value"] - pr["X5"]["value"])
    assert all(v["n_paired_rows"] == 4000 for v in pr.values())
    md = (tmp_path / "comparison.md").read_text()
    assert "paired one-standard-error rule" in md and "| X3 **winner** |" in md and "| X5 (best) |" in md


def _brier_frames(n_pat: int) -> dict[str, pl.DataFrame]:
    """Hand-checkable Brier case. Every patient has rows y = (1, 0); half are "easy" (A predicts 0.8/0.2,
    squared errors 0.04) and half "hard" (A predicts 0.5/0.5, 0.25). B's squared error is A's + 0.01 on
    every row, so B − A = +0.01 on every bootstrap replicate (paired SE 0), while each arm's own Brier
    varies with the easy/hard mix of the resample (unpaired SE ≈ 0.105/√n_pat). C equals A exactly."""
    pid = np.repeat(np.arange(n_pat), 2)
    hard = (pid % 2).astype(bool)
    y = np.tile([1, 0], n_pat).astype(np.int8)
    err_a = np.where(hard, 0.5, 0.2)  # |p − y| per row
    err_b = np.sqrt(err_a**2 + 0.01)
    pa = np.where(y == 1, 1 - err_a, err_a)
    pb = np.where(y == 1, 1 - err_b, err_b)
    base = {"patient_id": pid.astype(np.int64), "year": np.tile([2019, 2020], n_pat).astype(np.int16)}

    def frame(p: np.ndarray) -> pl.DataFrame:
        return pl.DataFrame({**base, "probability": p, "label_rec": y, "eval_label_true": y})

    return {"B": frame(pb), "C": frame(pa), "A": frame(pa)}


def test_one_se_paired_rule_hand_checked() -> None:
    from clinrisk.experiments import WinnerRule, one_se_winner

    frames = _brier_frames(60)
    rule = WinnerRule(rule="one_se", metric="brier", labels="recorded", split="test")
    w = one_se_winner(frames, ["B", "C", "A"], rule, 0.1, 200, 0)
    pr = w["per_run"]
    assert pr["A"]["value"] == pytest.approx((0.04 + 0.25) / 2)
    assert w["best"] == "C"  # A and C tie; the first in order is the best
    assert pr["B"]["diff_vs_best"] == pytest.approx(0.01) and pr["B"]["se_paired"] == pytest.approx(
        0, abs=1e-12
    )
    assert not pr["B"]["eligible"]  # 0.01 > paired SE 0 ...
    assert pr["B"]["se_unpaired"] > 0.01  # ... though within one unpaired SE (the old rule picked B)
    assert w["winner"] == "C"
    # the simpler arm equal to the best is eligible (gap 0 ≤ SE 0) and wins by order
    w2 = one_se_winner(frames, ["A", "B", "C"], rule, 0.1, 200, 0)
    assert w2["best"] == "A" and w2["winner"] == "A" and w2["per_run"]["C"]["eligible"]
    # higher-is-better sign: B below the best by AP 0 here (same ranking) → eligible
    w3 = one_se_winner(frames, ["B", "A"], WinnerRule(rule="one_se", metric="ap", labels="true"), 0.1, 50, 0)
    assert w3["winner"] == "B" and w3["per_run"]["B"]["gap"] == pytest.approx(0.0, abs=1e-12)


def test_one_se_joins_on_patient_year_and_refuses_disjoint_arms() -> None:
    from clinrisk.errors import DataError
    from clinrisk.experiments import WinnerRule, one_se_winner

    frames = _brier_frames(60)
    rule = WinnerRule(rule="one_se", metric="brier", labels="recorded", split="test")
    # B scored only the first 40 patients (e.g. a different eligibility): paired on its 80 rows
    frames["B"] = frames["B"].filter(pl.col("patient_id") < 40).reverse()
    w = one_se_winner(frames, ["B", "A"], rule, 0.1, 100, 0)
    assert w["per_run"]["B"]["n_paired_rows"] == 80 and w["per_run"]["A"]["n_paired_rows"] == 120
    assert w["per_run"]["B"]["diff_vs_best"] == pytest.approx(0.01)
    frames["B"] = frames["B"].with_columns(pl.col("patient_id") + 1000)
    with pytest.raises(DataError, match="share no \\(patient_id, year\\) rows"):
        one_se_winner(frames, ["B", "A"], rule, 0.1, 100, 0)


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
    monkeypatch.setattr(X.running, "_run_locally", fake({"B"}))
    first = X.run_suite(suite, extra_overrides=sets, out_dir=tmp_path / "out")
    assert [r["status"] for r in first["runs"]] == ["ok", "failed"] and calls == ["A", "B"]
    monkeypatch.setattr(X.running, "_run_locally", fake(set()))
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


# ------------------------------------------------------------------------- data cache (generate+validate)

TINY_DATA = [
    "generate.n_patients=400",
    "generate.n_shards=2",
    "generate.block_size=100",
    "generate.calibration_patients=200",
]


def _cfg(tmp: Path, name: str, *extra: str):  # type: ignore[no-untyped-def]
    from clinrisk.config import load_config

    return load_config(
        SUITES.parent / "tiny.yaml",
        [*TINY_DATA, f"run.name={name}", f"run.output_dir={tmp / 'runs'}", *extra],
    )


def _data_and_features(cfg, where: Path, features: bool = True) -> dict:  # type: ignore[no-untyped-def]
    """The pipeline's data + feature steps, as kfp.local wires them, on one config; returns the hashes
    the run records (raw manifest, validation report, and the bundle's data_hash = features hash)."""
    from clinrisk import steps
    from clinrisk.config import save_config
    from clinrisk.io import list_shards, read_json
    from clinrisk.train import data_hash

    save_config(cfg, where / "config" / "config.yaml")
    c = where / "config"
    steps.plan_generation_step(c, where / "plan")
    plan = read_json(where / "plan" / "plan.json")
    shards = range(plan["n_shards"])
    gen = [where / f"gen{s}" for s in shards]
    val = [where / f"val{s}" for s in shards]
    for s in shards:
        steps.generate_shard_step(c, where / "plan", s, gen[s])
        steps.validate_shard_step(c, gen[s], s, val[s])
    raw, valid = where / "merge" / "raw", where / "merge" / "validated"
    steps.merge_data_step(c, where / "plan", gen, val, raw, valid, where / "merge" / "report.md")
    manifest = read_json(raw / "manifest.json")
    report = read_json(valid / "validation" / "report.json")
    out = {
        "plan": plan,
        "raw": raw,
        "observed_hash": manifest["observed_hash"],
        "truth_hash": manifest["truth_hash"],
        "validated_content_hash": report["validated_content_hash"],
        "report_md": (where / "merge" / "report.md").read_text(),
    }
    if not features:
        return out
    steps.fit_feature_spec_step(c, valid, where / "spec")
    feats = [where / f"feat{s}" for s in shards]
    for s in shards:
        steps.build_features_shard_step(c, where / "spec", valid, raw, s, feats[s])
    steps.merge_features_step(c, where / "spec", feats, where / "features")
    out["features_hash"] = data_hash(where / "features", list_shards(where / "features"))["features_hash"]
    return out


def test_data_key_covers_exactly_what_determines_the_data(tmp_path: Path) -> None:
    from clinrisk.datacache import data_key

    k = data_key(_cfg(tmp_path, "a"))
    # not in the key: run name/paths/workers and everything after validation
    assert (
        data_key(_cfg(tmp_path, "b", "run.workers=1", "features.window_years=1", "labels.strategy=E2")) == k
    )
    for change in ("run.seed=8", "generate.n_patients=401", "generate.delay_severity=severe",
                   "validate.max_quarantine_fraction=0.04"):  # fmt: skip
        assert data_key(_cfg(tmp_path, "a", change)) != k, change


def test_data_cache_reuses_identical_data_and_never_other_data(tmp_path: Path) -> None:
    cache = f"experiments.data_cache_dir={tmp_path / 'cache'}"
    first = _data_and_features(_cfg(tmp_path, "a", cache, "features.window_years=1"), tmp_path / "a")
    assert first["plan"]["data_cache"]["reused_from"] is None and not first["raw"].is_symlink()
    reused = _data_and_features(_cfg(tmp_path, "b", cache), tmp_path / "b")
    assert reused["plan"]["data_cache"]["reused_from"] == "a"
    assert reused["raw"].is_symlink() and reused["raw"].resolve() == first["raw"].resolve()  # copy-free
    assert not any((tmp_path / "b" / "gen0").glob("*/shard=*"))  # nothing generated
    assert "Data reused from run `a`" in reused["report_md"]
    # the same config without the cache: what a fresh run produces and records
    fresh = _data_and_features(_cfg(tmp_path, "b"), tmp_path / "fresh")
    assert "data_cache" not in fresh["plan"]
    for key in ("observed_hash", "truth_hash", "validated_content_hash", "features_hash"):
        assert reused[key] == fresh[key], key
    assert first["features_hash"] != fresh["features_hash"]  # other window: other features, same data
    # a different seed or cohort size never reuses (and publishes its own entry)
    for i, change in enumerate(("run.seed=8", "generate.n_patients=500")):
        other = _data_and_features(_cfg(tmp_path, "c", cache, change), tmp_path / f"c{i}", features=False)
        assert other["plan"]["data_cache"]["reused_from"] is None, change
        assert other["observed_hash"] != first["observed_hash"], change
    assert len(list((tmp_path / "cache").glob("*/entry.json"))) == 3
    # an entry whose data is gone is ignored: the run regenerates
    import shutil

    shutil.rmtree(tmp_path / "a" / "merge")
    again = _data_and_features(_cfg(tmp_path, "d", cache), tmp_path / "d", features=False)
    assert again["plan"]["data_cache"]["reused_from"] is None
    assert again["observed_hash"] == fresh["observed_hash"]
