"""``units.unit_audit`` (issue 20: one resolution pass per feature shard) equals the two functions it
replaces, on rows that hit every quarantine reason, inference, conversion and the weight rule."""

from __future__ import annotations

import polars as pl

from clinrisk import units
from tests.features.synth import frame, row, synthetic_raw


def _faulty_rows() -> pl.DataFrame:
    rows = [
        row(1, 2010, glucose_value=110.0, glucose_unit="mmol/L"),  # implausible_for_unit
        row(1, 2011, glucose_value=6.0, glucose_unit=None),  # inferred
        row(1, 2012, glucose_value=6.0, glucose_unit="mmol/L"),  # converted
        row(1, 2014, glucose_value=1e6, glucose_unit=None),  # implausible_any_unit
        row(2, 2010, weight_value=80.0, weight_unit="kg"),
        row(2, 2011, weight_value=80.0, weight_unit=None),  # ambiguous kg/lb: resolved by the last weight
        row(3, 2010, weight_value=90.0, weight_unit=None, height_value=None),  # may stay ambiguous
    ]
    # A unit of another analyte (HbA1c is not a concentration): incompatible_unit.
    bad_unit = frame([row(4, 2010, hba1c_value=6.0, hba1c_unit="%")])
    bad_unit = bad_unit.with_columns(pl.lit("mg/dL").alias("hba1c_unit"))
    return pl.concat([frame(rows).with_columns(pl.col("hba1c_unit").cast(pl.String)), bad_unit])


def test_audit_equals_quarantine_and_counts() -> None:
    for df in (_faulty_rows(), synthetic_raw(300, seed=5)):
        lf = df.lazy().sort("patient_id", "year")
        quarantine, counts = units.unit_audit(lf)
        assert quarantine.equals(units.unit_quarantine(lf).collect())
        assert quarantine.schema == units.unit_quarantine(lf).collect_schema()
        assert counts == units.unit_counts(lf)
    reasons = set(units.unit_audit(_faulty_rows().lazy().sort("patient_id", "year"))[0]["reason"])
    assert {"implausible_for_unit", "incompatible_unit", "implausible_any_unit"} <= reasons
