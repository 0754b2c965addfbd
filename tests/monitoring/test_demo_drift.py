"""The drift → retrain demo's schedule: B is later than A and no label window reaches the evaluation years."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

DEMO = Path(__file__).resolve().parents[2] / "benchmarks" / "demo_drift_retrain.py"


def _demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_drift_retrain", DEMO)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_plan_windows_default_schedule() -> None:
    plan = _demo().plan_windows((2018, 2020), horizon=3)
    assert plan["a"] == {"train_years": (2005, 2009), "validation_years": (2010, 2011)}
    # B: the latest rows whose labels (t, t+3] are all observed by the end of 2017
    assert plan["b"] == {"train_years": (2008, 2012), "validation_years": (2013, 2014)}
    assert plan["last_training_label_year"] == {"a": 2014, "b": 2017}
    assert plan["first_eval_outcome_year"] == 2019 and plan["gap_years"] == 1


@pytest.mark.parametrize("eval_years,horizon", [((2018, 2020), 3), ((2019, 2020), 3), ((2016, 2020), 1)])
def test_plan_windows_never_overlap_evaluation_labels(eval_years: tuple[int, int], horizon: int) -> None:
    plan = _demo().plan_windows(eval_years, horizon=horizon)
    for model in ("a", "b"):
        train, val = plan[model]["train_years"], plan[model]["validation_years"]
        assert train[1] < val[0]
        # every training/validation row's label window ends before any evaluation row's window starts
        assert val[1] + horizon < plan["first_eval_outcome_year"]
        assert val[1] < eval_years[0] and train[1] < eval_years[0]
    assert plan["b"]["train_years"][1] > plan["a"]["train_years"][1]


def test_plan_windows_rejects_schedules_without_a_later_model() -> None:
    demo = _demo()
    with pytest.raises(ValueError, match="not later"):
        demo.plan_windows((2014, 2016), horizon=3)
    with pytest.raises(ValueError, match="increasing"):
        demo.plan_windows((2020, 2018), horizon=3)


def test_evaluation_rows_are_labelled_rows_of_the_evaluation_years_only(tmp_path: Path) -> None:
    """Every patient bucket, no training/validation/embargo year, no unlabelled (censored) row."""
    import polars as pl

    from clinrisk.io import SHARD_FILE

    demo = _demo()
    years = list(range(2005, 2024))
    for shard in range(2):
        rows = pl.DataFrame(
            {
                "patient_id": [shard * 10 + p for p in range(3) for _ in years],
                "year": years * 3,
                "split": ["train", "unused", "test"] * len(years),
                # censored: no label for years whose window passes 2023
                "label_rec": [None if y > 2020 else int(y % 2 == 0) for _ in range(3) for y in years],
            }
        )
        d = tmp_path / f"shard={shard:03d}"
        d.mkdir()
        rows.write_parquet(d / SHARD_FILE)
    ev = demo.evaluation_rows(tmp_path, (2018, 2020))
    assert sorted(set(ev["year"].to_list())) == [2018, 2019, 2020]
    assert ev.height == 2 * 3 * 3 and ev["label_rec"].null_count() == 0
    assert set(ev["split"].to_list()) == {"train", "unused", "test"}  # every bucket, not only "test"
    plan = demo.plan_windows((2018, 2020), horizon=3)
    spans = [plan[m][k] for m in ("a", "b") for k in ("train_years", "validation_years")]
    used = {y for lo, hi in spans for y in range(lo, hi + 1)}
    assert used.isdisjoint(ev["year"].to_list())
    assert ev.select(pl.col("patient_id").diff().fill_null(0) >= 0).to_series().all()


@pytest.mark.slow
def test_demo_end_to_end_tiny(tmp_path: Path) -> None:
    """1,000 patients (~15 s): the result carries every variant, the schedule, and a comparison on the
    evaluation years only."""
    import json

    demo = _demo()
    root = Path(__file__).resolve().parents[2]
    r = demo.run_demo(tmp_path / "demo", 1000, n_boot=10, base_config=root / "configs" / "tiny.yaml")
    assert json.loads((tmp_path / "demo" / "demo_drift.json").read_text())["model_b"] == r["model_b"]
    variants = {"unweighted", "age_standardised", "locf_as_trend", "adjusted"}
    assert set(r["first_retrain_year"]) == variants and r["decision_variant"] == "adjusted"
    assert [e["year"] for e in r["replay"]] == list(range(2012, 2024))
    assert all(variants <= set(e) for e in r["replay"])
    assert r["plan"]["gap_years"] == 1 and r["model_a"] != r["model_b"]
    c = r["comparison"]
    for lab in ("recorded", "true"):
        assert set(c[lab]["per_year"]) == {"2018", "2019", "2020"}
        assert sum(v["rows"] for v in c[lab]["per_year"].values()) == c[lab]["rows"] == c["rows"] > 0
        assert {"ap", "brier", "auc"} <= set(c[lab]["b_minus_a"])
    assert set(c["rows_by_split"]) <= {"test", "unused"}  # never a training/validation/embargo row
    assert any(e["adjusted"]["effective_rows"] < e["rows"] for e in r["replay"])  # weights were applied
    assert "\n".join(demo.summary_lines(r)).count("\n") > 12


def _result(first: int | None) -> dict:
    entry = {
        "decision": "retrain",
        "n_drifted_features": 3,
        "drifted_features": ["a", "b", "c"],
        "score_psi": 0.05,
        "effective_rows": 900.0,
        "unmatched_reference_share": 0.1,
        "reasons": ["3 features with PSI > 0.25 (>= 3): a, b, c", "score KS 0.1100 > 0.1"],
    }
    one = {"ap": 0.5, "brier": 0.05, "mean_p": 0.09}
    diff = {k: {"diff": -0.001, "lo": -0.002, "hi": 0.0, "p_value": 0.1} for k in ("ap", "brier", "auc")}
    cmp_ = {"rows": 10, "patients": 5, "prevalence": 0.1, "model_a": one, "model_b": one, "b_minus_a": diff}
    variants = ("unweighted", "age_standardised", "locf_as_trend", "adjusted")
    return {
        "first_retrain_year": dict.fromkeys(variants, first),
        "replay": [{"year": 2020, "rows": 1000, "mean_age": 66.0, **dict.fromkeys(variants, entry)}],
        "comparison": {lab: {**cmp_, "per_year": {"2018": cmp_}} for lab in ("recorded", "true")},
        "drift_vs_model_b": {"2020": {"unweighted": entry, "adjusted": entry}},
    }


def test_report_tables_from_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    demo = _demo()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_result(2020)))
    b.write_text(json.dumps(_result(None)))
    demo.main(["--report", str(a), str(b)])
    out = capsys.readouterr().out
    assert "| secular drift | 2020 | 2020 | 2020 | 2020 |" in out
    assert "| control (`--no-secular-drift`) | None | None | None | None |" in out
    # the feature reason is the feature list; other reasons (score KS) are kept
    assert (
        "| 2020 | 1000 | 66.0 | 3 R | 3 R | 3 R | 3 R | 0.050 / 0.050 | 900, 0.10 | a, b, c; score KS" in out
    )
    assert "| secular drift | true | 2018 | 10 | 0.1000 |" in out


def test_report_of_a_missing_run_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        _demo().main(["--report", str(tmp_path / "none.json"), str(tmp_path / "none2.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --report:")
