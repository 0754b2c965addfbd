"""Feature selection under a memory budget (clinrisk.selection, `clinrisk select`).

The synthetic features dataset plants: strong/moderate informative features, a correlated duplicate
with extra missingness, a constant, a near-constant and a mostly-missing column, uninformative
continuous features and a high-cardinality noise code - so every filter and the probe threshold have a
known right answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from clinrisk.config import ClinriskConfig, load_config
from clinrisk.errors import ConfigError, DataError
from clinrisk.features import FeatureSpec
from clinrisk.selection import (
    HAZARD_FAMILIES,
    NOISE_PREFIXES,
    SELECTION_FILE,
    binned_ap,
    choose_patients,
    family_members,
    load_selected_features,
    matched_threshold,
    plan_sample_rows,
    select_features,
    stable_hash,
    summary_metrics,
)

SPLITS = ["train", "validation", "test", "embargo", "unused"]
OTHER = "__OTHER__"
ETH = ["Asian", "Black", "Hispanic", "Other", "White", OTHER]
CODES = [f"C{i:02d}" for i in range(40)] + [OTHER]

# feature -> dtype name (FeatureSpec vocabulary)
LAYOUT: dict[str, str] = {
    "age": "Int16",
    "sex": "Enum",
    "ethnicity": "Enum",
    "family_history": "Int8",
    "hba1c_mean_3y": "Float32",  # strong signal
    "hba1c_locf": "Float32",  # planted duplicate of hba1c_mean_3y (2 % extra missingness)
    "bmi": "Float32",  # moderate signal
    "ldl": "Float32",  # noise
    "tg": "Float32",  # noise
    "visits": "UInt8",  # noise
    "other_dx_code": "Enum",  # Zipf noise code
    "rx_metformin": "Int8",  # planted near-constant
    "dx_I25": "Int8",  # planted constant
    "egfr_slope_3y": "Float32",  # planted mostly-missing
}
CATEGORIES = {"sex": ["F", "M", OTHER], "ethnicity": ETH, "other_dx_code": CODES}
INFORMATIVE = ["hba1c_mean_3y", "bmi", "age", "family_history"]


def make_features_dataset(root: Path, n_patients: int = 1500, n_shards: int = 3, seed: int = 5) -> Path:
    """Write a contract-shaped features dataset (shards + feature_spec.json) under ``root``."""
    rng = np.random.default_rng(seed)
    years = rng.integers(4, 9, n_patients)
    pid = np.repeat(np.arange(1, n_patients + 1, dtype=np.int64) * 7 + 1000, years)
    pidx = np.repeat(np.arange(n_patients), years)
    n = pid.size
    year = (2010 + np.concatenate([np.arange(k) for k in years])).astype(np.int16)
    split_p = rng.choice(5, n_patients, p=[0.7, 0.15, 0.1, 0.03, 0.02])[pidx]
    male = rng.random(n_patients)[pidx] < 0.5
    eth = rng.choice(5, n_patients, p=[0.1, 0.15, 0.15, 0.05, 0.55])[pidx]
    famhx = (rng.random(n_patients) < 0.25)[pidx]
    age = (rng.integers(35, 75, n_patients)[pidx] + np.concatenate([np.arange(k) for k in years])).astype(
        np.int16
    )
    hba1c = rng.normal(5.7, 0.5, n_patients)[pidx] + rng.normal(0, 0.15, n)
    bmi = rng.normal(28, 5, n_patients)[pidx] + rng.normal(0, 0.5, n)
    eth_eff = np.array([0.4, 0.4, 0.4, 0.0, 0.0])[eth]
    logit = (
        -3.2
        + 1.6 * (hba1c - 5.7) / 0.5
        + 0.8 * (bmi - 28) / 5
        + 0.6 * (age - 55) / 12
        + 0.5 * male
        + 1.0 * famhx
        + eth_eff
    )
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)

    hba1c_obs = np.where(rng.random(n) < 0.08, np.nan, hba1c)
    # % -> mmol/mol: a monotone copy, present on nearly the same rows (co-presence Jaccard ~0.98)
    dup = np.where(rng.random(n) < 0.02, np.nan, hba1c_obs * 10.93 - 23.5)
    near_const = np.zeros(n, np.int8)
    near_const[rng.choice(n, 2, replace=False)] = 1
    mostly_missing = np.full(n, np.nan)
    present = rng.choice(n, max(3, n // 600), replace=False)
    mostly_missing[present] = rng.normal(0, 1, present.size)
    zipf = np.minimum(rng.zipf(1.6, n) - 1, 40)
    codes = np.array(CODES)[zipf]
    code_list = [None if m else c for m, c in zip(rng.random(n) < 0.05, codes.tolist(), strict=True)]
    weight = np.where(rng.random(n) < 0.02, 0.0, 1.0).astype(np.float32)

    df = pl.DataFrame(
        {
            "patient_id": pid,
            "year": year,
            "split": pl.Series(np.array(SPLITS)[split_p]).cast(pl.Enum(SPLITS)),
            "age": age,
            "sex": pl.Series(np.where(male, "M", "F")).cast(pl.Enum(CATEGORIES["sex"])),
            "ethnicity": pl.Series(np.array(ETH[:5])[eth]).cast(pl.Enum(ETH)),
            "family_history": famhx.astype(np.int8),
            "hba1c_mean_3y": hba1c_obs.astype(np.float32),
            "hba1c_locf": dup.astype(np.float32),
            "bmi": bmi.astype(np.float32),
            "ldl": rng.normal(120, 30, n).astype(np.float32),
            "tg": rng.lognormal(4.7, 0.4, n).astype(np.float32),
            "visits": rng.integers(0, 8, n).astype(np.uint8),
            "other_dx_code": pl.Series(code_list, dtype=pl.String).cast(pl.Enum(CODES)),
            "rx_metformin": near_const,
            "dx_I25": np.zeros(n, np.int8),
            "egfr_slope_3y": mostly_missing.astype(np.float32),
            "label": label,
            "label_rec": label.astype(np.int8),
            "sample_weight": weight,
            "eval_label_true": label.astype(np.int8),  # a perfect predictor that must never be read
        }
    ).with_columns(pl.col(c).fill_nan(None) for c, d in LAYOUT.items() if d == "Float32")
    root.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n_patients, n_shards + 1).astype(int)
    for k in range(n_shards):
        lo, hi = bounds[k], bounds[k + 1]
        part = df.filter(pl.col("patient_id").is_between(lo * 7 + 1007, (hi - 1) * 7 + 1007))
        (root / f"shard={k:03d}").mkdir(parents=True, exist_ok=True)
        part.write_parquet(root / f"shard={k:03d}" / "part.parquet")
    FeatureSpec(
        window_years=3,
        locf=True,
        horizon_years=3,
        feature_names=list(LAYOUT),
        dtypes=LAYOUT,
        categories=CATEGORIES,
        units={},
        raw_fields=[],
    ).to_json(root / "feature_spec.json")
    return root


FAST = [
    "select.rounds=5",
    "select.probe_rounds_boost=60",
    "select.n_probes=16",
    "train.num_threads=1",
]


def fast_cfg(*extra: str) -> ClinriskConfig:
    return load_config(None, [*FAST, *extra])


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_features_dataset(tmp_path_factory.mktemp("sel") / "features")


@pytest.fixture(scope="module")
def result(features_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sel_out") / "selection"
    doc = select_features(fast_cfg(), features_dir, out)
    doc["_out"] = str(out)
    return doc


# ----------------------------------------------------------------------------------------------- filters


def test_filters_drop_exactly_the_planted_features(result: dict[str, Any]) -> None:
    assert result["dropped"]["missing"] == ["egfr_slope_3y"]
    assert result["dropped"]["constant"] == ["dx_I25"]
    assert result["dropped"]["near_constant"] == ["rx_metformin"]
    assert result["dropped"]["correlated"] == ["hba1c_locf"]
    dup = result["filters"]["hba1c_locf"]
    assert dup["correlated_with"] == "hba1c_mean_3y" and dup["rho"] > 0.99
    assert result["clusters"] == [["hba1c_mean_3y", "hba1c_locf"]]
    assert result["n_features_after_filters"] == len(LAYOUT) - 4
    for name in ("age", "bmi", "ldl", "tg", "other_dx_code", "sex"):
        assert result["filters"][name]["decision"] == "kept"


# --------------------------------------------------------------------------------------------- stability


def test_probes_never_selected_informative_are(result: dict[str, Any]) -> None:
    q = result["quality"]
    # held-out probes estimate the null false-selection rate: small, not necessarily 0 (1 of 16 here)
    assert q["probe_false_selection_rate"] <= 1 / 16
    held = result["probes"]["heldout_frequency"]
    assert len(held) == 16 and sum(f >= 0.7 for f in held.values()) <= 1
    assert all(n.startswith("__heldout_probe_") for n in held)
    assert set(INFORMATIVE) <= set(result["selected"])
    for name in INFORMATIVE:
        assert result["selection_frequency"][name] == 1.0
    assert "other_dx_code" not in result["selected"]
    assert q["noise_false_selection_rate"] == 0.0
    assert not {"ldl", "visits"} & set(result["selected"])
    assert not any(n.startswith("__probe_") or n.startswith("eval_") for n in result["selected"])
    # permuted copies of the categoricals come first among the probes, one per cardinality, fewest first
    origins = list(result["probes"]["origin"].values())
    assert origins[:3] == ["permuted:sex", "permuted:ethnicity", "permuted:other_dx_code"]
    assert origins[3] == "permuted:family_history"  # then numerics from the fewest distinct values up
    assert result["config"]["probe_threshold"] == "matched"
    assert 0.0 <= result["stability"]["mean_pairwise_jaccard"] <= 1.0


def test_deterministic_from_the_seed(features_dir: Path, result: dict[str, Any], tmp_path: Path) -> None:
    again = select_features(fast_cfg(), features_dir, tmp_path / "sel")
    assert again["selected"] == result["selected"]
    assert again["selection_frequency"] == result["selection_frequency"]
    assert again["filters"] == result["filters"]
    assert again["probes"] == result["probes"]
    assert again["evaluation"]["delta_ap"] == result["evaluation"]["delta_ap"]


# ------------------------------------------------------------------------------------------ memory budget


def test_budget_bounds_the_sample_rows() -> None:
    small = plan_sample_rows(64, 400_000, 2_000, 10)
    big = plan_sample_rows(4_000, 400_000, 2_000, 10)
    assert small < big
    # the data part of a 64 MB budget holds at most 16 MB of planned working bytes
    assert small * (10 * (2_000 + 2 * 10) + 32) <= 16 * 2**20
    assert plan_sample_rows(100_000, 5_000, 10, 10) == 5_000


def test_sample_is_whole_training_patients_within_cap(features_dir: Path) -> None:
    shards = sorted(features_dir.glob("shard=*/part.parquet"))
    chosen, rows_total, patients_total = choose_patients(shards, "train", 1_000, seed=3)
    df = pl.concat([pl.read_parquet(f, columns=["patient_id", "split", "sample_weight"]) for f in shards])
    train = df.filter((pl.col("split") == "train") & (pl.col("sample_weight") > 0))
    assert rows_total == train.height and patients_total == train["patient_id"].n_unique()
    counts = dict(train.group_by("patient_id").len().iter_rows())
    taken = sum(counts[int(p)] for p in chosen)
    assert 900 < taken <= 1_000  # whole patients, as many as fit
    assert set(chosen.tolist()) <= set(counts)
    again, _, _ = choose_patients(shards, "train", 1_000, seed=3)
    assert again.tolist() == chosen.tolist()
    other, _, _ = choose_patients(shards, "train", 1_000, seed=4)
    assert other.tolist() != chosen.tolist()


def test_sample_rows_cap_is_applied_end_to_end(features_dir: Path, tmp_path: Path) -> None:
    doc = select_features(
        fast_cfg("select.sample_rows=2000", "select.rounds=2"), features_dir, tmp_path / "s"
    )
    s = doc["sample"]
    assert s["row_cap"] == 2_000 and 1_800 < s["rows"] <= 2_000
    assert s["rows"] < s["train_rows_total"]
    assert s["matrix_bytes"] == s["rows"] * len(LAYOUT) * 4


# ------------------------------------------------------------------------------------------ output / json


def test_output_json(result: dict[str, Any]) -> None:
    path = Path(result["_out"]) / SELECTION_FILE
    doc = json.loads(path.read_text())
    assert doc["selected"] == result["selected"]
    assert load_selected_features(Path(result["_out"])) == result["selected"]
    assert doc["n_features_before"] == len(LAYOUT)
    assert doc["n_features_selected"] == len(doc["selected"])
    assert set(doc["selection_frequency"]) == {
        n for n, d in doc["filters"].items() if d["decision"] == "kept"
    }
    assert len(doc["probes"]["names"]) == 16 and len(doc["probes"]["max_gain_per_round"]) == 5
    ev = doc["evaluation"]
    assert ev["full"]["n_features"] == len(LAYOUT) and ev["selected"]["n_features"] == len(doc["selected"])
    assert ev["delta_ap"] == pytest.approx(ev["selected"]["ap"] - ev["full"]["ap"])
    assert ev["delta_brier"] == pytest.approx(ev["selected"]["brier"] - ev["full"]["brier"])
    assert ev["selected"]["ap"] > 0.3  # the signal is strong
    assert doc["resources"]["peak_rss_mb"] > 0 and doc["resources"]["memory_budget_mb"] == 1500
    assert doc["sample"]["rows"] > 0 and doc["sample"]["patients"] > 0
    assert "eval_label_true" not in doc["filters"]
    fam = doc["quality"]["hazard_families"]
    assert fam["glycaemia"]["recovered"] and fam["adiposity"]["recovered"] and fam["age"]["recovered"]
    assert fam["pcos"]["recovered"] is None  # not in this synthetic spec
    assert 0.0 < doc["quality"]["hazard_family_recall"] <= 1.0
    assert not list(Path(result["_out"]).parent.glob(".selection.tmp-*"))
    m = summary_metrics(doc)
    assert m["n_features_before"] == len(LAYOUT) and m["delta_ap"] == ev["delta_ap"]
    assert m["probe_false_selection_rate"] == doc["quality"]["probe_false_selection_rate"]
    assert "hazard_family_recall" in m


def test_disabled_selects_everything(features_dir: Path, tmp_path: Path) -> None:
    doc = select_features(fast_cfg("select.enabled=false"), features_dir, tmp_path / "s")
    assert doc["selected"] == list(LAYOUT)
    assert load_selected_features(tmp_path / "s" / SELECTION_FILE) == list(LAYOUT)


# ------------------------------------------------------------------------------------------- bad inputs


def test_missing_features_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="features directory not found"):
        select_features(fast_cfg(), tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_feature_spec(features_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "features"
    (d / "shard=000").mkdir(parents=True)
    (d / "shard=000" / "part.parquet").write_bytes((features_dir / "shard=000" / "part.parquet").read_bytes())
    with pytest.raises(DataError, match=r"feature_spec\.json missing"):
        select_features(fast_cfg(), d, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_shard_missing_a_feature_column(features_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "features"
    (d / "shard=000").mkdir(parents=True)
    (d / "feature_spec.json").write_text((features_dir / "feature_spec.json").read_text())
    pl.read_parquet(features_dir / "shard=000" / "part.parquet").drop("bmi").write_parquet(
        d / "shard=000" / "part.parquet"
    )
    with pytest.raises(DataError, match=r"shard=000/part.parquet: missing columns \['bmi'\]"):
        select_features(fast_cfg(), d, tmp_path / "out")


def test_no_training_rows(features_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "features"
    (d / "shard=000").mkdir(parents=True)
    (d / "feature_spec.json").write_text((features_dir / "feature_spec.json").read_text())
    df = pl.read_parquet(features_dir / "shard=000" / "part.parquet")
    df.with_columns(split=pl.lit("test").cast(df["split"].dtype)).write_parquet(
        d / "shard=000" / "part.parquet"
    )
    with pytest.raises(DataError, match="no training-split rows"):
        select_features(fast_cfg(), d, tmp_path / "out")


def test_no_shards(features_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "features"
    d.mkdir()
    (d / "feature_spec.json").write_text((features_dir / "feature_spec.json").read_text())
    with pytest.raises(DataError, match="no shard=NNN"):
        select_features(fast_cfg(), d, tmp_path / "out")


# ------------------------------------------------------------------------------------------- pure helpers


def test_binned_ap_matches_metrics_ap() -> None:
    from clinrisk.metrics import average_precision

    rng = np.random.default_rng(0)
    bins = rng.integers(0, 7, 2_000)
    y = (rng.random(2_000) < 0.05 + 0.03 * bins).astype(float)
    w = rng.choice([0.5, 1.0, 2.0], 2_000)
    score = (np.bincount(bins, weights=w * y) / np.bincount(bins, weights=w))[bins]
    assert binned_ap(bins, 7, y, w) == pytest.approx(average_precision(y, score, sample_weight=w))


def test_stable_hash_is_fixed() -> None:
    h = stable_hash(np.array([0, 1, 123456789]), 20261123)
    assert h.dtype == np.uint64 and len(set(h.tolist())) == 3
    assert stable_hash(np.array([123456789]), 20261123)[0] == h[2]
    assert int(stable_hash(np.array([0]), 0)[0]) == 0xE220A8397B1DCDAF  # splitmix64 reference value


def test_family_map_matches_real_feature_names() -> None:
    from clinrisk.features import feature_layout

    names = list(feature_layout(3, True))
    for fam, prefixes in HAZARD_FAMILIES.items():
        assert family_members(names, prefixes), f"family {fam} has no member among the real features"
    assert family_members(names, NOISE_PREFIXES) == ["other_dx_code"]
    assert family_members(names, ("age",)) == ["age"]
    assert "hba1c_slope_3y" in family_members(names, HAZARD_FAMILIES["glycaemic_slope"])


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_select(features_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clinrisk.cli.app import build_app

    args = ["select", "--features", str(features_dir), "--out", str(tmp_path / "sel")]
    for s in [*FAST, "select.rounds=2"]:
        args += ["--set", s]
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    assert f"features: {len(LAYOUT)} before" in res.output
    assert "peak RSS" in res.output and "ΔAP" in res.output
    assert (tmp_path / "sel" / SELECTION_FILE).is_file()

    bad = CliRunner().invoke(
        build_app(), ["select", "--features", str(tmp_path / "x"), "--out", str(tmp_path / "o")]
    )
    assert bad.exit_code == 2
    assert "features directory not found" in bad.output


# ------------------------------------------------------------------------- integration: real features stage


@pytest.fixture(scope="module")
def real_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A features dataset written by the real features stage (clinrisk.features) from synthetic raw rows."""
    from clinrisk.features_stage import build_features_dataset
    from clinrisk.io import shard_file
    from tests.features.synth import synthetic_raw, synthetic_truth

    d = tmp_path_factory.mktemp("real")
    for s in range(2):
        raw = synthetic_raw(300, seed=20 + s, id_offset=10_000 * s)
        for name, df in (("validated", raw), ("truth", synthetic_truth(raw, s))):
            f = shard_file(d / name, s)
            f.parent.mkdir(parents=True)
            df.write_parquet(f)
    cfg = load_config(None, ["split.temporal=false"])
    build_features_dataset(cfg, d / "validated", d / "features", d / "truth", workers=1)
    return d / "features"


def test_integration_with_the_features_stage(real_features: Path, tmp_path: Path) -> None:
    from clinrisk.features import FeatureSpec, feature_columns

    spec = FeatureSpec.from_json(real_features / "feature_spec.json")
    cfg = fast_cfg("split.temporal=false", "select.rounds=3", "train.min_data_in_leaf=20")
    doc = select_features(cfg, real_features, tmp_path / "sel")
    names = feature_columns(spec)
    assert doc["n_features_before"] == len(names)
    assert set(doc["filters"]) == set(names)  # exactly the spec's features: no eval_/label/id column
    assert doc["selected"] and set(doc["selected"]) <= set(names)
    assert doc["selected"] == [n for n in names if n in set(doc["selected"])]  # spec order
    assert set(doc["selected"]) <= {n for n, d in doc["filters"].items() if d["decision"] == "kept"}
    fams = doc["quality"]["hazard_families"]
    assert doc["quality"]["hazard_families_missing_from_spec"] == []
    assert all(f["members"] > 0 for f in fams.values())
    assert doc["quality"]["noise_features"] == ["other_dx_code"]
    assert 0 < doc["sample"]["rows"] <= doc["sample"]["train_rows_total"]
    assert load_selected_features(tmp_path / "sel") == doc["selected"]


def test_matched_threshold_uses_probes_of_no_higher_cardinality() -> None:
    gains = np.array([[0.10, 0.01, 0.05], [0.20, 0.02, 0.03]])  # rounds x probes
    card = np.array([41, 2, 64])
    thr = matched_threshold(gains, card, np.array([2, 50, 64, 1]), min_pool=1)
    assert thr[:, 0].tolist() == [0.01, 0.02]  # binary target: only the binary probe
    assert thr[:, 1].tolist() == [0.10, 0.20]  # 50 levels: binary + 41-level probes
    assert thr[:, 2].tolist() == [0.10, 0.20]  # all probes
    assert thr[:, 3].tolist() == [0.01, 0.02]  # below every probe: the lowest-cardinality probes


def test_matched_mode_runs_and_reports_heldout_probes(features_dir: Path, tmp_path: Path) -> None:
    doc = select_features(fast_cfg("select.probe_threshold=matched"), features_dir, tmp_path / "s")
    assert set(INFORMATIVE) <= set(doc["selected"])
    assert doc["config"]["probe_threshold"] == "matched"
    assert doc["quality"]["probe_false_selection_rate"] is not None


def test_training_falls_back_to_all_features_when_selection_is_not_non_inferior(tmp_path: Path) -> None:
    import json

    from clinrisk.selection import SELECTION_FILE, features_for_training

    doc = {"selected": ["a", "b"], "evaluation": {"acceptable": False, "delta_ap": -0.04}}
    (tmp_path / SELECTION_FILE).write_text(json.dumps(doc))
    assert features_for_training(tmp_path) is None
    # select.apply=always: experiments measure what the selected set costs, so it is used regardless.
    assert features_for_training(tmp_path, "always") == ["a", "b"]
    with pytest.raises(ConfigError, match=r"select\.apply"):
        features_for_training(tmp_path, "sometimes")
    doc["evaluation"]["acceptable"] = True
    (tmp_path / SELECTION_FILE).write_text(json.dumps(doc))
    assert features_for_training(tmp_path) == ["a", "b"]


def test_correlated_only_when_present_on_the_same_rows() -> None:
    """A copy that is present on many more rows (LOCF vs last-in-window) carries information the rank
    correlation on co-present rows cannot see: it must not be clustered away; an exact copy must."""
    from clinrisk.selection import cheap_filters

    rng = np.random.default_rng(3)
    n = 4_000
    x = rng.normal(size=n).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * x))).astype(np.float64)
    sparse = np.where(rng.random(n) < 0.5, np.nan, x).astype(np.float32)  # same values, half the rows
    twin = (x * 2 + 1).astype(np.float32)  # exact monotone copy, same rows
    X = np.stack([x, sparse, twin], axis=1)

    def run(min_copresence: float) -> Any:
        return cheap_filters(
            X,
            y,
            np.ones(n),
            ["x", "sparse", "twin"],
            set(),
            max_missing_share=0.99,
            near_constant_share=0.999,
            correlation_threshold=0.95,
            min_copresence=min_copresence,
        )

    res = run(0.9)
    assert res.decisions["sparse"]["decision"] == "kept"
    assert {res.decisions["x"]["decision"], res.decisions["twin"]["decision"]} == {"kept", "dropped"}
    legacy = run(0.0)
    assert len(legacy.kept) == 1  # without the co-presence rule all three collapse into one


def test_matched_threshold_is_kind_aware() -> None:
    gains = np.array([[0.10, 0.002, 0.004]])  # categorical 64-level probe, binary probe, noise probe
    card = np.array([64, 2, 64])
    kinds = np.array([True, False, False])
    targets, target_kinds = np.array([64, 64, 2]), np.array([True, False, False])
    thr = matched_threshold(gains, card, targets, kinds, target_kinds, min_pool=1)
    assert thr[0].tolist() == [0.10, 0.004, 0.002]  # numeric targets never face the categorical probe
    thr = matched_threshold(gains, card, targets, kinds, target_kinds, min_pool=2)
    assert thr[0].tolist() == [0.10, 0.004, 0.004]  # pool topped up with the next cardinality


def test_probe_sources_cover_kinds_and_cardinalities() -> None:
    from clinrisk.selection import probe_sources

    names = ["c2", "c64", "b1", "b2", "k5", "cont1", "cont2"]
    card = [2, 64, 2, 2, 5, 64, 64]
    src = probe_sources(names, {"c2", "c64"}, 5, np.random.default_rng(0), card)
    picked = [names[i] for i in src]
    assert picked[:2] == ["c2", "c64"]
    nums = picked[2:]
    assert len(nums) == 3 and any(n.startswith("b") for n in nums) and any(n.startswith("cont") for n in nums)
