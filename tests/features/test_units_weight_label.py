"""A flipped weight label (kg value tagged lb or the reverse) is caught by BMI plausibility with the
patient's height, never converted silently (found by benchmarks/bench_units.py: before the rule, 92 % of
the generator's flipped weight labels came out as wrong canonical values)."""

from __future__ import annotations

import polars as pl
import pytest

from clinrisk.units import normalise_units, unit_quarantine


def _frame(rows: list[tuple[float | None, str | None]]) -> pl.LazyFrame:
    n = len(rows)
    return pl.LazyFrame(
        {
            "patient_id": [1] * n,
            "year": list(range(2010, 2010 + n)),
            "height_value": [170.0] * n,
            "height_unit": ["cm"] * n,
            "weight_value": [r[0] for r in rows],
            "weight_unit": [r[1] for r in rows],
        },
        schema_overrides={"year": pl.Int16},
    )


def test_flipped_labels_are_quarantined_correct_ones_kept() -> None:
    rows = [(80.0, "kg"), (80.0, "lb"), (176.4, "lb"), (200.0, "kg"), (100.0, "kg"), (None, "kg")]
    lf = _frame(rows)
    out = normalise_units(lf, ("weight",)).collect()["weight"].to_list()
    assert out[0] == pytest.approx(80.0)
    assert out[1] is None  # 80 "lb" = 36 kg: BMI 12.6 at 1.70 m, while 80 kg gives 27.7
    assert out[2] == pytest.approx(176.4 * 0.45359237)
    assert out[3] is None  # 200 "kg": BMI 69 at 1.70 m, while 200 lb = 90.7 kg gives 31.4
    assert out[4] == pytest.approx(100.0)  # BMI 34.6 as kg, 15.7 as lb: both plausible -> label trusted
    assert out[5] is None
    q = unit_quarantine(lf, ("weight",)).collect()
    assert q["reason"].to_list() == ["implausible_for_unit", "implausible_for_unit"]
    assert q["year"].to_list() == [2011, 2013]


def test_unknown_height_trusts_the_label() -> None:
    lf = _frame([(80.0, "lb")]).with_columns(height_value=pl.lit(None, dtype=pl.Float64))
    assert normalise_units(lf, ("weight",)).collect()["weight"].item() == pytest.approx(80.0 * 0.45359237)
