"""The row-wise evaluator (serving) equals the feature function bit for bit.

``clinrisk.features_rowwise`` repeats ``build_feature_frame``'s definitions in Python floats. These tests
compare every feature of every row, as Float32 bit patterns (nulls must match too), on generated data and
on contract-shaped data with gaps between years, unit faults, unseen levels and roll-ups, at several
windows X with and without LOCF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clinrisk.config import load_config
from clinrisk.errors import DataError
from clinrisk.features import FeatureSpec, build_feature_frame, fit_feature_spec
from clinrisk.features_rowwise import RowwiseFeatureBuilder
from clinrisk.generator.schema import OBSERVED_SCHEMA
from tests.features.synth import row, synthetic_raw


def _spec(raw: pl.DataFrame, *sets: str) -> FeatureSpec:
    return fit_feature_spec(raw.lazy(), load_config(None, list(sets)))


def _rowwise_frame(raw: pl.DataFrame, spec: FeatureSpec, last_only: bool) -> pl.DataFrame:
    cols = raw.select(list(OBSERVED_SCHEMA)).sort("patient_id", "year").to_dict(as_series=False)
    rows = RowwiseFeatureBuilder(spec).rows(cols, last_only=last_only)
    return pl.DataFrame(
        {n: [r[n] for r in rows] for n in spec.feature_names},
        schema={n: spec.polars_dtype(n) for n in spec.feature_names},
        strict=False,
    )


def _mismatches(want: pl.DataFrame, got: pl.DataFrame, spec: FeatureSpec) -> dict[str, int]:
    """Feature -> number of rows whose value (Float32 bits, or exact value; null included) differs."""
    assert want.height == got.height
    bad: dict[str, int] = {}
    for n in spec.feature_names:
        a, b = want[n], got[n]
        same_null = (a.is_null() == b.is_null()).to_numpy()
        if spec.dtypes[n] == "Float32":
            av = a.fill_null(0.0).to_numpy().astype(np.float32).view(np.uint32)
            bv = b.fill_null(0.0).to_numpy().astype(np.float32).view(np.uint32)
            same = same_null & (av == bv)
        else:
            same = same_null & (a.cast(pl.String).fill_null("") == b.cast(pl.String).fill_null("")).to_numpy()
        if not same.all():
            bad[n] = int((~same).sum())
    return bad


def _check(raw: pl.DataFrame, spec: FeatureSpec, last_only: bool = False) -> int:
    want = build_feature_frame(raw.lazy(), spec).collect()
    if last_only:
        want = want.group_by("patient_id", maintain_order=True).last()
    got = _rowwise_frame(raw, spec, last_only)
    assert _mismatches(want, got, spec) == {}
    return want.height


@pytest.fixture(scope="module")
def generated_raw(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """Validated rows of the product generator (unit faults, secular drift, real missingness)."""
    from clinrisk.generate import generate_dataset
    from clinrisk.io import list_shards
    from clinrisk.validate import validate_dataset

    root = tmp_path_factory.mktemp("rowwise")
    cfg = load_config(None, ["generate.n_patients=700", "generate.n_shards=1", "run.seed=5"])
    generate_dataset(cfg, root / "raw", workers=1, progress=False)
    validate_dataset(cfg, root / "raw", root, workers=1)
    files = [str(f) for f in list_shards(root / "validated")]
    return pl.read_parquet(files).select(list(OBSERVED_SCHEMA)).sort("patient_id", "year")


def _with_gaps(raw: pl.DataFrame, seed: int, drop: float = 0.3) -> pl.DataFrame:
    keep = np.random.default_rng(seed).random(raw.height) >= drop
    return raw.filter(pl.Series(keep))


def test_generated_population_every_row(generated_raw: pl.DataFrame) -> None:
    spec = _spec(generated_raw)
    assert _check(generated_raw, spec) > 5000


def test_generated_population_with_gaps_between_years(generated_raw: pl.DataFrame) -> None:
    gappy = _with_gaps(generated_raw, seed=1)
    _check(gappy, _spec(gappy))


@pytest.mark.parametrize(("window", "locf"), [(1, False), (2, True), (3, False), (5, True)])
def test_synthetic_windows_units_and_rollups(window: int, locf: bool) -> None:
    raw = _with_gaps(synthetic_raw(250, seed=window), seed=window)
    spec = _spec(
        raw,
        f"features.window_years={window}",
        f"features.locf={str(locf).lower()}",
        "features.other_dx_rollup_chars=3",
    )
    _check(raw, spec)


def test_serving_shaped_histories_last_row(generated_raw: pl.DataFrame) -> None:
    """Instances as served: the last X+1 calendar years, only the current row kept."""
    spec = _spec(generated_raw)
    x = spec.window_years
    last = pl.col("year").max().over("patient_id")
    window = generated_raw.filter(pl.col("year") > last - x - 1)
    assert _check(window, spec, last_only=True) > 300


def test_unseen_levels_map_to_other(generated_raw: pl.DataFrame) -> None:
    spec = _spec(generated_raw)
    odd = generated_raw.head(200).with_columns(
        pl.lit(999, dtype=pl.Int16).alias("site_id"),
        pl.lit("ZZZ.9").cast(pl.Categorical).alias("other_dx_code"),
    )
    got = _rowwise_frame(odd, spec, last_only=False)
    assert got["site_id"].cast(pl.String).unique().to_list() == ["__OTHER__"]
    _check(odd, spec)


def test_weight_unit_rules_match(raw_small: pl.DataFrame) -> None:
    """Flipped kg/lb labels, unlabelled weights resolved by the last labelled weight or by BMI, and ones
    left ambiguous: the evaluator resolves each like the units layer does."""
    spec = _spec(raw_small)
    rows = [
        # labelled 80 kg; unlabelled 176 is near 80 kg read as lb, unlabelled 81 near it as kg; then 80
        # "lb" (BMI implausible as lb, plausible as kg: a flipped label -> null)
        row(1, 2010, height_value=180.0, height_unit="cm", weight_value=80.0, weight_unit="kg"),
        row(1, 2011, weight_value=176.0, weight_unit=None),
        row(1, 2012, weight_value=81.0, weight_unit=None),
        row(1, 2013, weight_value=80.0, weight_unit="lb"),
        # no labelled weight yet: BMI with the height decides; no height: ambiguous -> null
        row(2, 2010, height_value=150.0, height_unit="cm", weight_value=150.0, weight_unit=None),
        row(3, 2010, height_value=None, height_unit=None, weight_value=90.0, weight_unit=None),
        # height in inches feeds both the weight rule and BMI
        row(4, 2010, height_value=70.0, height_unit="in", weight_value=200.0, weight_unit=None),
    ]
    raw = pl.DataFrame(rows, schema=OBSERVED_SCHEMA, orient="row")
    got = _rowwise_frame(raw, spec, last_only=False)
    weights = got["weight"].to_list()
    assert weights[0] == pytest.approx(80.0) and weights[3] is None
    assert weights[1] == pytest.approx(176 * 0.45359237, rel=1e-6) and weights[2] == pytest.approx(81.0)
    assert weights[4] == pytest.approx(150 * 0.45359237, rel=1e-6)  # 150 kg at 150 cm is BMI 67
    assert weights[5] is None
    _check(raw, spec)


def test_selected_names_and_unknown_names(generated_raw: pl.DataFrame) -> None:
    spec = _spec(generated_raw)
    names = ["hba1c_locf", "age", "site_id", "egfr_slope_3y"]
    b = RowwiseFeatureBuilder(spec, names)
    cols = generated_raw.head(50).to_dict(as_series=False)
    rows = b.rows(cols)
    assert all(list(r) == names for r in rows)
    with pytest.raises(DataError, match="not in the feature spec"):
        RowwiseFeatureBuilder(spec, ["hba1c_locf", "no_such_feature"])


def test_matrix_equals_bundle_encoding(generated_raw: pl.DataFrame) -> None:
    """``matrix`` encodes like ``bundle.features_to_matrix``: spec level index, NaN for null."""
    from clinrisk.bundle import features_to_matrix

    spec = _spec(generated_raw)
    raw = generated_raw.head(400)
    names = list(spec.feature_names)
    want = features_to_matrix(
        build_feature_frame(raw.lazy(), spec).collect(),
        names,
        {n: spec.categories[n] for n in spec.categories},
    )
    b = RowwiseFeatureBuilder(spec)
    got = b.matrix(b.rows(raw.to_dict(as_series=False), last_only=False), names, spec.categories)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True)


def test_rows_must_be_sorted_by_year(generated_raw: pl.DataFrame) -> None:
    spec = _spec(generated_raw)
    pid = generated_raw["patient_id"][0]
    two = generated_raw.filter(pl.col("patient_id") == pid).head(2).reverse()
    with pytest.raises(DataError, match="strictly increasing years"):
        RowwiseFeatureBuilder(spec).rows(two.to_dict(as_series=False))


def test_module_has_no_polars_query_path() -> None:
    """The evaluator must not fall back to polars queries (that is the cost it exists to avoid)."""
    src = Path(__file__).resolve().parents[2] / "src" / "clinrisk" / "features_rowwise.py"
    text = src.read_text()
    assert "collect(" not in text and "pl.col(" not in text
