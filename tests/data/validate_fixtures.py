"""Hand-built raw observed frames that follow the contract table exactly (dtypes from OBSERVED_SCHEMA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from clinrisk.io import shard_file, write_json
from clinrisk.schemas import OBSERVED_SCHEMA

FIRST_YEAR, LAST_YEAR = 2000, 2023


def clean_frame(n_patients: int = 20, years: int = 4, first_pid: int = 0, seed: int = 0) -> pl.DataFrame:
    """``n_patients`` x ``years`` clean patient-years, sorted by (patient_id, year), contract dtypes."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(first_pid, first_pid + n_patients), years)
    year = np.tile(np.arange(2010, 2010 + years), n_patients)
    n = pid.size

    def per_patient(values: np.ndarray) -> np.ndarray:
        return np.repeat(values, years)

    si = per_patient(rng.random(n_patients) < 0.3)
    data: dict[str, object] = {
        "patient_id": pid,
        "year": year,
        "sex": per_patient(rng.choice(["F", "M"], n_patients)),
        "birth_year": per_patient(rng.integers(1940, 1975, n_patients)),
        "region": per_patient(rng.choice(["NE", "MW", "S", "W"], n_patients)),
        "site_id": per_patient(rng.integers(0, 40, n_patients)),
        "ethnicity": per_patient(rng.choice(["White", "Black", "Hispanic", "Asian", "Other"], n_patients)),
        "entry_year": per_patient(rng.integers(2000, 2009, n_patients)),
        "insurance": rng.choice(["commercial", "medicaid", "medicare", "uninsured"], n),
        "family_history": per_patient(rng.random(n_patients) < 0.2),
        "visits": rng.integers(0, 8, n),
        "height_value": np.where(si, 170.0, 67.0) + rng.normal(0, 2, n),
        "height_unit": np.where(si, "cm", "in"),
        "weight_value": np.where(si, 80.0, 176.0) + rng.normal(0, 3, n),
        "weight_unit": np.where(si, "kg", "lb"),
        "sbp_mmhg": rng.normal(125, 12, n),
        "hba1c_value": np.where(si, 38.0, 5.6) + rng.normal(0, 0.1, n),
        "hba1c_unit": np.where(si, "mmol/mol", "%"),
        "glucose_value": np.where(si, 5.5, 100.0) * (1 + rng.normal(0, 0.05, n)),
        "glucose_unit": np.where(si, "mmol/L", "mg/dL"),
        "ldl_value": np.where(si, 2.9, 112.0),
        "ldl_unit": np.where(si, "mmol/L", "mg/dL"),
        "hdl_value": np.where(si, 1.4, 55.0),
        "hdl_unit": np.where(si, "mmol/L", "mg/dL"),
        "tc_value": np.where(si, 5.0, 190.0),
        "tc_unit": np.where(si, "mmol/L", "mg/dL"),
        "tg_value": np.where(si, 1.2, 105.0),
        "tg_unit": np.where(si, "mmol/L", "mg/dL"),
        "creatinine_value": np.where(si, 80.0, 0.9),
        "creatinine_unit": np.where(si, "umol/L", "mg/dL"),
        "other_dx_code": rng.choice(["A01.1", "B02.2", "C03.3"], n),
    }
    for c in OBSERVED_SCHEMA:
        if c.startswith(("rx_", "dx_")):
            data[c] = rng.random(n) < 0.1
    df = pl.DataFrame(data).select(OBSERVED_SCHEMA.keys())
    df = df.cast(dict(OBSERVED_SCHEMA))  # type: ignore[arg-type]
    # realistic missingness: some labs/vitals absent, some units null (the unit-null fault)
    return df.with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 3)
        .then(None)
        .otherwise(pl.col("hba1c_value"))
        .alias("hba1c_value"),
        pl.when(pl.int_range(pl.len()) % 7 == 3)
        .then(None)
        .otherwise(pl.col("hba1c_unit"))
        .alias("hba1c_unit"),
        pl.when(pl.int_range(pl.len()) % 11 == 5)
        .then(None)
        .otherwise(pl.col("glucose_unit"))
        .alias("glucose_unit"),
    )


def write_raw(raw_dir: Path, frames: list[pl.DataFrame], manifest: dict | None = None) -> Path:
    """Write frames as ``raw_dir/observed/shard=NNN/part.parquet`` plus a minimal ``manifest.json``."""
    for i, df in enumerate(frames):
        path = shard_file(raw_dir / "observed", i)
        path.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(path, compression="zstd")
    base = {
        "content_hash": "fixture-hash",
        "n_shards": len(frames),
        "n_rows": sum(f.height for f in frames),
    }
    write_json(raw_dir / "manifest.json", base if manifest is None else manifest)
    return raw_dir
