"""build_feature_frame: gap-aware windows, LOCF, slope, derived values, categoricals, parity."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from clinrisk.errors import DataError
from clinrisk.features import (
    OTHER,
    FeatureSpec,
    build_feature_frame,
    categorical_features,
    feature_columns,
    feature_matrix,
    fit_feature_spec,
)
from tests.features.synth import frame, row


def _build(rows, spec: FeatureSpec) -> pl.DataFrame:
    return build_feature_frame(frame(rows).lazy(), spec).collect()


def test_feature_count_and_narrow_dtypes(spec: FeatureSpec) -> None:
    assert len(spec.feature_names) >= 100
    allowed = {"Float32", "Int8", "Int16", "UInt8", "Enum"}
    assert set(spec.dtypes.values()) <= allowed


def test_window_respects_calendar_gaps(spec: FeatureSpec) -> None:
    # 2012 missing: the 2013 window (2011, 2013] must hold 2011 and 2013 only, never 2010.
    rows = [row(1, y, hba1c_value=v, hba1c_unit="%") for y, v in [(2010, 9.0), (2011, 5.0), (2013, 6.0)]]
    rows.append(row(1, 2014, hba1c_value=None, hba1c_unit=None))
    df = _build(rows, spec).sort("year")
    r13 = df.filter(pl.col("year") == 2013).row(0, named=True)
    assert r13["hba1c_mean_3y"] == pytest.approx(5.5)
    assert r13["hba1c_max_3y"] == pytest.approx(6.0)
    assert r13["hba1c_min_3y"] == pytest.approx(5.0)
    assert r13["hba1c_n_3y"] == 2
    assert r13["hba1c_slope_3y"] == pytest.approx(0.5)  # (6 - 5) / 2 years
    r14 = df.filter(pl.col("year") == 2014).row(0, named=True)
    assert r14["hba1c_n_3y"] == 1 and r14["hba1c_mean_3y"] == pytest.approx(6.0)
    assert r14["hba1c_slope_3y"] is None  # one point only
    assert r14["hba1c"] is None and r14["hba1c_missing"] == 1
    assert r14["hba1c_last_3y"] == pytest.approx(6.0)


def test_locf_and_years_since_last(spec: FeatureSpec) -> None:
    rows = [row(1, 2005, hba1c_value=5.8, hba1c_unit="%")] + [row(1, y) for y in range(2006, 2012)]
    df = _build(rows, spec).sort("year")
    assert df["hba1c_locf"].to_list() == pytest.approx([5.8] * 7)
    assert df["hba1c_years_since"].to_list() == [0, 1, 2, 3, 4, 5, 6]
    # last within window only while the value is < X years old
    assert df["hba1c_last_3y"].is_null().to_list() == [False, False, False, True, True, True, True]
    never = _build([row(2, 2005), row(2, 2006)], spec)
    assert never["hba1c_locf"].is_null().all() and never["hba1c_years_since"].is_null().all()


def test_slope_is_ols(spec: FeatureSpec) -> None:
    vals = {2010: 5.0, 2011: 5.4, 2012: 5.5}
    df = _build([row(1, y, hba1c_value=v, hba1c_unit="%") for y, v in vals.items()], spec)
    expected = np.polyfit(list(vals), list(vals.values()), 1)[0]
    assert df["hba1c_slope_3y"][-1] == pytest.approx(expected, rel=1e-5)


def test_derived_bmi_egfr_age(spec: FeatureSpec) -> None:
    rows = [
        row(
            1,
            2010,
            sex="F",
            birth_year=1950,
            height_value=160.0,
            height_unit="cm",
            weight_value=64.0,
            weight_unit="kg",
            creatinine_value=0.7,
            creatinine_unit="mg/dL",
        ),
        row(
            1,
            2011,
            sex="F",
            birth_year=1950,
            height_value=None,
            height_unit=None,
            weight_value=141.0,
            weight_unit="lb",
        ),
    ]
    df = _build(rows, spec).sort("year")
    assert df["age"].to_list() == [60, 61]
    assert df["history_years"].to_list() == [10, 11]
    assert df["bmi"][0] == pytest.approx(25.0, rel=1e-5)
    assert df["bmi"][1] == pytest.approx(141 * 0.45359237 / 1.6**2, rel=1e-5)  # height carried forward
    # CKD-EPI 2021, female, Scr = kappa: 142 * 0.9938^60 * 1.012
    assert df["egfr"][0] == pytest.approx(142 * 0.9938**60 * 1.012, rel=1e-5)
    # no creatinine that year: eGFR is missing, not Scr = kappa (a function of age and sex only)
    assert df["egfr"][1] is None
    assert df["egfr_missing"].to_list() == [0, 1]
    male = _build(
        [row(2, 2010, sex="M", birth_year=1950, creatinine_value=1.8, creatinine_unit="mg/dL")], spec
    )
    assert male["egfr"][0] == pytest.approx(142 * (1.8 / 0.9) ** -1.2 * 0.9938**60, rel=1e-5)


def test_flags_counts_and_ever(spec: FeatureSpec) -> None:
    rows = [
        row(1, 2010, rx_statin=True, dx_I10=True, visits=3),
        row(1, 2011, visits=0),
        row(1, 2013, visits=1),
    ]
    df = _build(rows, spec).sort("year")
    assert df["rx_statin"].to_list() == [1, 0, 0]
    assert df["rx_statin_ever"].to_list() == [1, 1, 1]
    assert df["n_comorb"].to_list() == [1, 0, 0]
    assert df["n_comorb_ever"].to_list() == [1, 1, 1]
    assert df["visits_sum_3y"].to_list() == [3, 3, 1]
    assert "dx_E11" not in df.columns


def test_categoricals_frozen_rare_and_unseen_to_other(raw_small, cfg) -> None:
    spec = fit_feature_spec(raw_small.lazy(), cfg)
    levels = spec.categories["other_dx_code"]
    assert levels[-1] == OTHER and len(levels) <= cfg.features.max_categories
    assert all(len(lv) == 3 for lv in levels[:-1])  # rolled up to the 3-character ICD category
    df = _build([row(1, 2010, region="NE", other_dx_code="Q99.9"), row(1, 2011, other_dx_code=None)], spec)
    assert df["other_dx_code"].to_list() == [OTHER, None]
    assert df["region"].dtype == pl.Enum(spec.categories["region"])
    x = feature_matrix(df, spec)
    assert x.dtype == np.float32 and x.shape == (2, len(spec.feature_names))
    j = spec.feature_names.index("other_dx_code")
    assert x[0, j] == len(levels) - 1 and np.isnan(x[1, j])
    assert set(categorical_features(spec)) == {
        "sex",
        "region",
        "ethnicity",
        "insurance",
        "site_id",
        "other_dx_code",
    }


def test_spec_learns_only_from_training_split(raw_small, cfg) -> None:
    from clinrisk.splits import patient_bucket_expr

    marked = raw_small.with_columns(
        pl.when(patient_bucket_expr() >= 60)
        .then(pl.lit("X99.1"))
        .otherwise(pl.col("other_dx_code").cast(pl.String))
        .alias("other_dx_code")
    )
    spec = fit_feature_spec(marked.lazy(), cfg)
    assert "X99" not in spec.categories["other_dx_code"]


def test_spec_json_round_trip(spec: FeatureSpec, tmp_path) -> None:
    p = tmp_path / "feature_spec.json"
    spec.to_json(p)
    assert FeatureSpec.from_json(p) == spec
    with pytest.raises(DataError, match="not found"):
        FeatureSpec.from_json(tmp_path / "nope.json")


def test_missing_raw_column_is_named(spec: FeatureSpec) -> None:
    with pytest.raises(DataError, match="hba1c_value"):
        build_feature_frame(frame([row(1, 2010)]).drop("hba1c_value").lazy(), spec).collect()


def test_parity_single_patient_vs_batch_and_order(raw_small, spec: FeatureSpec) -> None:
    batch = build_feature_frame(raw_small.lazy(), spec).collect()
    shuffled = raw_small.sample(fraction=1.0, shuffle=True, seed=3)
    assert_frame_equal(build_feature_frame(shuffled.lazy(), spec).collect(), batch)
    for pid in raw_small["patient_id"].unique().sort().head(25):
        alone = build_feature_frame(raw_small.filter(pl.col("patient_id") == pid).lazy(), spec).collect()
        assert_frame_equal(alone, batch.filter(pl.col("patient_id") == pid), check_exact=True)
        # serving keeps the last row of one patient's history
        assert_frame_equal(alone.tail(1), batch.filter(pl.col("patient_id") == pid).tail(1), check_exact=True)


def test_feature_columns_never_include_ids_labels_or_eval(spec: FeatureSpec) -> None:
    cols = feature_columns(spec)
    assert cols == spec.feature_names
    bad = {
        "patient_id",
        "year",
        "split",
        "label",
        "label_rec",
        "sample_weight",
        "dx_E11",
        "onset_year",
        "hazard",
    }
    assert not bad & set(cols)
    assert not [c for c in cols if c.startswith("eval_")]
    broken = spec.model_copy(update={"feature_names": [*spec.feature_names, "eval_label_true"]})
    with pytest.raises(DataError, match="eval_label_true"):
        feature_columns(broken)


def test_window_aggregates_equal_rolling_by_over(raw_small, spec: FeatureSpec) -> None:
    # The windows are computed from scratch over shifted rows; they must equal polars'
    # rolling_*_by("year", "3i").over(patient) (up to its incremental-sum rounding).
    from clinrisk.features import cast_raw
    from clinrisk.units import normalise_units

    feats = build_feature_frame(raw_small.lazy(), spec).collect()
    ref = (
        normalise_units(cast_raw(raw_small.lazy()).sort("patient_id", "year"))
        .with_columns(pl.col("year").cast(pl.Int32).alias("_yr"))
        .select(
            pl.col("glucose").rolling_mean_by("_yr", "3i").over("patient_id").cast(pl.Float32).alias("mean"),
            pl.col("glucose").rolling_max_by("_yr", "3i").over("patient_id").cast(pl.Float32).alias("max"),
            pl.col("glucose")
            .is_not_null()
            .cast(pl.UInt8)
            .rolling_sum_by("_yr", "3i")
            .over("patient_id")
            .alias("n"),
        )
        .collect()
    )
    assert np.allclose(feats["glucose_mean_3y"].to_numpy(), ref["mean"].to_numpy(), rtol=1e-6, equal_nan=True)
    assert feats["glucose_max_3y"].equals(ref["max"], check_names=False)
    assert (feats["glucose_n_3y"] == ref["n"]).all()


# A patient whose creatinine window sum, updated incrementally by polars' rolling context over the full
# history, differs in the last bit from the same window summed from scratch (found by search).
CREATININE_HISTORY = [
    (3.75, "mg/dL"),
    (434.9280090332031, "umol/L"),
    (13.079999923706055, "mg/dL"),
    (1138.592041015625, "umol/L"),
    (9.420000076293945, "mg/dL"),
    (1138.592041015625, "umol/L"),
]


def test_window_values_depend_on_the_window_rows_only(raw_small, spec: FeatureSpec) -> None:
    """A full training history and a served X+1-year history give bit-identical window features for the
    current year (polars' rolling sums are incremental, so they did not)."""
    x = spec.window_years
    crafted = pl.DataFrame(
        [
            row(10**6, 2010 + k, creatinine_value=v, creatinine_unit=u)
            for k, (v, u) in enumerate(CREATININE_HISTORY)
        ],
        schema=raw_small.schema,
        orient="row",
    )
    raw = pl.concat([raw_small, crafted])
    full = build_feature_frame(raw.lazy(), spec).collect()
    last = pl.col("year").max().over("patient_id")
    short = build_feature_frame(raw.filter(pl.col("year") > last - x - 1).lazy(), spec).collect()
    cur_full = full.filter(pl.col("year") == last).sort("patient_id")
    cur_short = short.filter(pl.col("year") == last).sort("patient_id")
    # weight and BMI are excluded: their canonical values legitimately use older rows (the last labelled
    # weight resolves an unlabelled one; height is carried forward)
    cols = [c for c in spec.feature_names if c.endswith(f"_{x}y") and not c.startswith(("weight_", "bmi_"))]
    assert len(cols) > 50
    assert cur_full.select(cols).equals(cur_short.select(cols))


def test_spec_levels_are_the_training_rows_value_counts(raw_small, cfg) -> None:
    """The streaming (column, level) count gives what an eager value_counts of the training rows gives:
    levels at or above the minimum share, the most frequent max_categories - 1 (ties by level), sorted,
    then __OTHER__; nulls are never a level."""
    from clinrisk.splits import assign_split

    spec = fit_feature_spec(raw_small.lazy(), cfg)
    fcfg = cfg.features
    train = assign_split(raw_small.lazy(), cfg.split, cfg.labels.horizon_years).filter(
        pl.col("split") == "train"
    )
    rows = train.collect()
    for c, levels in spec.categories.items():
        src = pl.col(c).cast(pl.String)
        if c == "other_dx_code" and fcfg.other_dx_rollup_chars:
            src = src.str.slice(0, fcfg.other_dx_rollup_chars)
        vc = rows.select(src.alias("v")).drop_nulls()["v"].value_counts()
        pairs = sorted(((v, int(n)) for v, n in vc.iter_rows()), key=lambda p: (-p[1], p[0]))
        keep = [v for v, n in pairs if n / rows.height >= fcfg.min_category_share][: fcfg.max_categories - 1]
        assert levels == [*sorted(keep), OTHER], c
