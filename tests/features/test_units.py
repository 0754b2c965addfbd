"""Units registry: factors against pint, round trips, HbA1c master equation, inference and rejection."""

from __future__ import annotations

import math

import pint
import polars as pl
import pytest

from clinrisk import units
from clinrisk.errors import DataError
from tests.features.synth import frame, row

UREG = pint.UnitRegistry()

MW = {"glucose": 180.156, "cholesterol": 386.65, "creatinine": 113.12}


def _pint_factor(mw: float) -> float:
    with UREG.context("chemistry", mw=mw * UREG("g/mol")):
        return UREG.Quantity(1.0, "mmol/L").to("mg/dL").magnitude


@pytest.mark.parametrize(
    ("analyte", "mw"),
    [
        ("glucose", MW["glucose"]),
        ("ldl", MW["cholesterol"]),
        ("hdl", MW["cholesterol"]),
        ("tc", MW["cholesterol"]),
    ],
)
def test_mass_molar_factors_match_pint(analyte: str, mw: float) -> None:
    ours = units.convert_value(analyte, 1.0, "mmol/L", "mg/dL")
    assert ours == pytest.approx(_pint_factor(mw), rel=1e-3)


def test_triglyceride_factor_is_lab_convention_close_to_pint() -> None:
    # Lab convention 88.57 (triolein); pint with MW 885.7 agrees to 1e-3.
    assert units.convert_value("tg", 1.0, "mmol/L", "mg/dL") == pytest.approx(_pint_factor(885.7), rel=1e-3)


def test_creatinine_length_mass_factors_match_pint() -> None:
    with UREG.context("chemistry", mw=MW["creatinine"] * UREG("g/mol")):
        f = UREG.Quantity(1.0, "mg/dL").to("umol/L").magnitude
    assert units.convert_value("creatinine", 1.0, "mg/dL", "umol/L") == pytest.approx(f, rel=1e-3)
    assert units.convert_value("height", 1.0, "in", "cm") == pytest.approx(
        UREG.Quantity(1.0, "inch").to("cm").magnitude, rel=1e-9
    )
    assert units.convert_value("weight", 1.0, "lb", "kg") == pytest.approx(
        UREG.Quantity(1.0, "lb").to("kg").magnitude, rel=1e-9
    )


def test_pint_refuses_mass_to_molar_without_mw() -> None:
    with pytest.raises(pint.DimensionalityError):
        UREG.Quantity(100.0, "mg/dL").to("mmol/L")


@pytest.mark.parametrize(
    ("analyte", "unit", "value"),
    [
        ("glucose", "mmol/L", 6.1),
        ("ldl", "mmol/L", 3.2),
        ("tg", "mmol/L", 1.7),
        ("creatinine", "umol/L", 80.0),
        ("hba1c", "mmol/mol", 42.0),
        ("height", "in", 66.0),
        ("weight", "lb", 180.0),
    ],
)
def test_round_trip(analyte: str, unit: str, value: float) -> None:
    canon = units.REGISTRY[analyte].canonical
    there = units.convert_value(analyte, value, unit, canon)
    assert units.convert_value(analyte, there, canon, unit) == pytest.approx(value, rel=1e-12)


def test_hba1c_uses_master_equation_not_pint() -> None:
    ifcc = units.convert_value("hba1c", 5.7, "%", "mmol/mol")
    assert ifcc == pytest.approx(38.8, abs=0.05)
    assert units.convert_value("hba1c", 6.5, "%", "mmol/mol") == pytest.approx(47.5, abs=0.1)
    # pint treats % as 0.01 and mmol/mol as 0.001 and says 57: clinically wrong, must not be used.
    assert UREG.Quantity(5.7, "percent").to("mmol/mol").magnitude == pytest.approx(57.0)
    assert not math.isclose(ifcc, 57.0, abs_tol=1.0)


def test_conversion_is_keyed_on_analyte() -> None:
    assert units.convert_value("glucose", 1.0, "mmol/L", "mg/dL") != units.convert_value(
        "tc", 1.0, "mmol/L", "mg/dL"
    )
    with pytest.raises(DataError, match="hba1c has no unit 'mg/dL'"):
        units.convert("hba1c", "mg/dL", "%")
    with pytest.raises(DataError, match="unknown analyte"):
        units.convert("bun", "mg/dL", "mmol/L")


def _clean(rows: list[dict]) -> tuple[pl.DataFrame, pl.DataFrame]:
    lf = frame(rows).lazy().sort("patient_id", "year")
    return units.normalise_units(lf).collect(), units.unit_quarantine(lf).collect()


def test_labelled_values_are_converted() -> None:
    df, q = _clean(
        [
            row(
                1,
                2010,
                glucose_value=5.55,
                glucose_unit="mmol/L",
                hba1c_value=48.0,
                hba1c_unit="mmol/mol",
                creatinine_value=88.4,
                creatinine_unit="umol/L",
                height_value=65.0,
                height_unit="in",
                weight_value=154.0,
                weight_unit="lb",
            ),
        ]
    )
    r = df.row(0, named=True)
    assert r["glucose"] == pytest.approx(5.55 * 18.016, rel=1e-6)
    assert r["hba1c"] == pytest.approx(0.09148 * 48 + 2.152, rel=1e-6)
    assert r["creatinine"] == pytest.approx(1.0, rel=1e-6)
    assert r["height"] == pytest.approx(65 * 2.54, rel=1e-6)
    assert r["weight"] == pytest.approx(154 * 0.45359237, rel=1e-6)
    assert q.height == 0


def test_missing_unit_inferred_when_one_range_fits() -> None:
    df, q = _clean([row(1, 2010, glucose_value=6.0, glucose_unit=None, height_value=70.0, height_unit=None)])
    assert df["glucose"][0] == pytest.approx(6.0 * 18.016, rel=1e-6)
    assert df["height"][0] == pytest.approx(70 * 2.54, rel=1e-6)
    assert q.height == 0


def test_wrong_label_is_quarantined_not_guessed() -> None:
    # mg/dL value labelled mmol/L (the 0.1 % fault) and a % HbA1c tagged mmol/mol.
    df, q = _clean(
        [row(1, 2010, glucose_value=110.0, glucose_unit="mmol/L", hba1c_value=5.9, hba1c_unit="mmol/mol")]
    )
    assert df["glucose"][0] is None and df["hba1c"][0] is None
    got = {(r["analyte"], r["reason"], r["raw_unit"]) for r in q.to_dicts()}
    assert got == {
        ("glucose", "implausible_for_unit", "mmol/L"),
        ("hba1c", "implausible_for_unit", "mmol/mol"),
    }
    assert q.columns == ["patient_id", "year", "analyte", "raw_value", "raw_unit", "reason"]


def test_ambiguous_and_impossible_missing_units_are_flagged() -> None:
    df, q = _clean([row(1, 2010, hba1c_value=16.0, hba1c_unit=None, glucose_value=1.0, glucose_unit=None)])
    assert df["hba1c"][0] is None and df["glucose"][0] is None
    reasons = dict(q.select("analyte", "reason").rows())
    assert reasons == {"hba1c": "ambiguous_missing_unit", "glucose": "implausible_any_unit"}


def test_incompatible_unit_string_is_rejected() -> None:
    lf = frame([row(1, 2010, hba1c_value=6.0, hba1c_unit="%")]).lazy()
    lf = lf.with_columns(pl.lit("mg/dL").alias("hba1c_unit"))  # HbA1c is not a concentration
    assert units.normalise_units(lf).collect()["hba1c"][0] is None
    assert units.unit_quarantine(lf).collect()["reason"].to_list() == ["incompatible_unit"]


def test_weight_uses_within_patient_consistency() -> None:
    rows = [
        row(1, 2010, weight_value=80.0, weight_unit="kg"),
        row(1, 2011, weight_value=176.0, weight_unit=None),  # ~80 kg in lb
        row(1, 2012, weight_value=81.0, weight_unit=None),  # kg
        row(
            2, 2010, weight_value=120.0, weight_unit=None, height_value=None, height_unit=None
        ),  # no reference
    ]
    df, q = _clean(rows)
    assert df["weight"][1] == pytest.approx(176 * 0.45359237, rel=1e-6)
    assert df["weight"][2] == pytest.approx(81.0)
    assert df["weight"][3] is None
    assert q.select("patient_id", "reason").rows() == [(2, "ambiguous_missing_unit")]


def test_weight_falls_back_to_bmi_with_height() -> None:
    # 45 kg at 150 cm is BMI 20; 45 lb would be BMI 9 (implausible) -> kg.
    df, q = _clean([row(1, 2010, weight_value=45.0, weight_unit=None, height_value=150.0, height_unit="cm")])
    assert df["weight"][0] == pytest.approx(45.0)
    assert q.height == 0


def test_unit_counts_add_up() -> None:
    rows = [
        row(1, 2010, glucose_value=110.0, glucose_unit="mmol/L"),
        row(1, 2011, glucose_value=6.0, glucose_unit=None),
        row(1, 2012, glucose_value=6.0, glucose_unit="mmol/L"),
    ]
    c = units.unit_counts(frame(rows).lazy())["glucose"]
    assert c["present"] == 3 and c["inferred"] == 1 and c["converted"] == 1 and c["implausible_for_unit"] == 1
