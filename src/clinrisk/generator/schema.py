"""Column names, levels and dtypes of the generator's observed and truth tables (docs/contracts.md)."""

from __future__ import annotations

import numpy as np
import polars as pl

SEX_LEVELS = ["F", "M"]
REGION_LEVELS = ["NE", "MW", "S", "W"]
ETHNICITY_LEVELS = ["White", "Black", "Hispanic", "Asian", "Other"]
INSURANCE_LEVELS = ["commercial", "medicaid", "medicare", "uninsured"]

# Unit pairs: canonical unit first (index 0), the alternative second (index 1).
UNIT_LEVELS: dict[str, list[str]] = {
    "height": ["cm", "in"],
    "weight": ["kg", "lb"],
    "hba1c": ["%", "mmol/mol"],
    "glucose": ["mg/dL", "mmol/L"],
    "ldl": ["mg/dL", "mmol/L"],
    "hdl": ["mg/dL", "mmol/L"],
    "tc": ["mg/dL", "mmol/L"],
    "tg": ["mg/dL", "mmol/L"],
    "creatinine": ["mg/dL", "umol/L"],
}
LAB_FIELDS = ["hba1c", "glucose", "ldl", "hdl", "tc", "tg", "creatinine"]
VITAL_UNIT_FIELDS = ["height", "weight"]

RX_COLUMNS = [
    "rx_statin",
    "rx_antihypertensive",
    "rx_glucocorticoid",
    "rx_antipsychotic",
    "rx_metformin",
    "rx_insulin",
]
DX_COLUMNS = [
    "dx_I10",
    "dx_E78",
    "dx_E66",
    "dx_R73",
    "dx_E28_2",
    "dx_O24_4",
    "dx_I25",
    "dx_K76_0",
    "dx_G47_33",
]

OBSERVED_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.Int64(),
    "year": pl.Int16(),
    "sex": pl.Enum(SEX_LEVELS),
    "birth_year": pl.Int16(),
    "region": pl.Enum(REGION_LEVELS),
    "site_id": pl.Int16(),
    "ethnicity": pl.Enum(ETHNICITY_LEVELS),
    "entry_year": pl.Int16(),
    "insurance": pl.Enum(INSURANCE_LEVELS),
    "family_history": pl.Boolean(),
    "visits": pl.UInt8(),
    "height_value": pl.Float32(),
    "height_unit": pl.Enum(UNIT_LEVELS["height"]),
    "weight_value": pl.Float32(),
    "weight_unit": pl.Enum(UNIT_LEVELS["weight"]),
    "sbp_mmhg": pl.Float32(),
    **{
        col: dtype
        for field in LAB_FIELDS
        for col, dtype in (
            (f"{field}_value", pl.Float32()),
            (f"{field}_unit", pl.Enum(UNIT_LEVELS[field])),
        )
    },
    **{c: pl.Boolean() for c in RX_COLUMNS},
    **{c: pl.Boolean() for c in DX_COLUMNS},
    "dx_E11": pl.Boolean(),
    "other_dx_code": pl.Categorical(),
}

TRUTH_SCHEMA: dict[str, pl.DataType] = {
    "patient_id": pl.Int64(),
    "year": pl.Int16(),
    "g_latent": pl.Float32(),
    "hazard": pl.Float32(),
    "onset_year": pl.Int16(),
    "recorded_year": pl.Int16(),
    "delay": pl.Int8(),
    "false_code": pl.Boolean(),
    "enrolled": pl.Boolean(),
}

N_OTHER_DX_CODES = 1500
_EXCLUDED_CODE_PREFIXES = ("E11", "I10", "E78", "E66", "R73", "E28", "O24", "I25", "K76", "G47")


def other_dx_codes(n: int = N_OTHER_DX_CODES) -> list[str]:
    """A fixed list of ``n`` ICD-10-like noise codes (rank 0 is the most frequent under Zipf)."""
    letters = "ABCDFGHJKLMNRSZ"
    pool = [f"{letter}{num:02d}.{dec}" for letter in letters for num in range(100) for dec in range(10)]
    pool = [c for c in pool if not c.startswith(_EXCLUDED_CODE_PREFIXES)]
    # A fixed permutation (not the master seed): the code list is part of the schema, not of a run.
    order = np.random.Generator(np.random.PCG64(1500)).permutation(len(pool))[:n]
    return [pool[i] for i in order]
