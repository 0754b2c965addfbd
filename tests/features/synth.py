"""Contract-shaped raw patient-years for tests and the benchmark (not the product generator).

Values are random but plausible, with the unit mix and unit faults of docs/science.md §1.8 and a recorded
diagnosis for some patients, so every code path of the features stage is exercised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from clinrisk.generator.schema import DX_COLUMNS, OBSERVED_SCHEMA, RX_COLUMNS, UNIT_LEVELS

FACTORS = {
    "glucose": 18.016,
    "ldl": 38.67,
    "hdl": 38.67,
    "tc": 38.67,
    "tg": 88.57,
}


def row(pid: int, year: int, **kw: Any) -> dict[str, Any]:
    """One raw row with plausible canonical defaults; keyword overrides win."""
    r: dict[str, Any] = dict.fromkeys(OBSERVED_SCHEMA)
    r.update(
        patient_id=pid,
        year=year,
        sex="F",
        birth_year=1950,
        region="NE",
        site_id=3,
        ethnicity="White",
        entry_year=2000,
        insurance="commercial",
        family_history=False,
        visits=2,
        height_value=165.0,
        height_unit="cm",
        weight_value=70.0,
        weight_unit="kg",
        sbp_mmhg=120.0,
        other_dx_code="A12.3",
        dx_E11=False,
    )
    for c in (*RX_COLUMNS, *DX_COLUMNS):
        r[c] = False
    r.update(kw)
    return r


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows -> a DataFrame with the contract dtypes."""
    return pl.DataFrame(
        rows,
        schema={
            k: pl.String if isinstance(v, pl.Enum | pl.Categorical) else v for k, v in OBSERVED_SCHEMA.items()
        },
    ).cast(OBSERVED_SCHEMA)


def synthetic_raw(
    n_patients: int, seed: int = 0, first_year: int = 2000, last_year: int = 2023, id_offset: int = 0
) -> pl.DataFrame:
    """Random contract-conformant observed rows, sorted by (patient_id, year)."""
    rng = np.random.default_rng(seed)
    n = n_patients
    entry = first_year + np.minimum(rng.geometric(0.15, n) - 1, 12)
    exit_ = np.minimum(last_year, entry + 4 + rng.geometric(0.06, n))
    lengths = exit_ - entry + 1
    pid = np.repeat(np.arange(id_offset + 1, id_offset + n + 1, dtype=np.int64), lengths)
    pidx = np.repeat(np.arange(n), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    year = entry[pidx] + (np.arange(len(pid)) - starts)
    m = len(pid)
    sex = rng.choice(["F", "M"], n)[pidx]
    birth = (first_year - rng.integers(30, 72, n))[pidx]
    region = rng.choice(["NE", "MW", "S", "W"], n, p=[0.17, 0.21, 0.38, 0.24])[pidx]
    si = np.isin(region, ["W"]) | ((region == "NE") & (rng.random(m) < 0.3))
    site = rng.integers(1, 40, n)[pidx]
    eth = rng.choice(["White", "Black", "Hispanic", "Asian", "Other"], n, p=[0.6, 0.13, 0.18, 0.06, 0.03])[
        pidx
    ]
    ins = rng.choice(["commercial", "medicaid", "medicare", "uninsured"], m, p=[0.55, 0.2, 0.15, 0.1])
    visits = np.minimum(rng.negative_binomial(2, 0.5, m), 40).astype(np.uint8)
    u = rng.normal(size=n)[pidx]
    g = 5.2 + 0.2 * u + 0.03 * (year - 2000) + rng.normal(0, 0.15, m)
    cols: dict[str, Any] = {
        "patient_id": pid,
        "year": year,
        "sex": sex,
        "birth_year": birth,
        "region": region,
        "site_id": site,
        "ethnicity": eth,
        "entry_year": entry[pidx],
        "insurance": ins,
        "family_history": (rng.random(n) < 0.2)[pidx],
        "visits": visits,
    }
    seen = visits > 0
    h = np.where(sex == "M", rng.normal(176, 7, n)[pidx], rng.normal(162, 7, n)[pidx])
    bmi = np.clip(27.5 + 3 * u + rng.normal(0, 0.5, m), 17, 55)
    canon = {
        "height": h,
        "weight": bmi * (h / 100) ** 2,
        "hba1c": np.clip(g, 4.0, 12.0),
        "glucose": np.clip(100 + 30 * (g - 5.7) + rng.normal(0, 8, m), 60, 400),
        "ldl": np.clip(rng.normal(112, 32, m), 30, 300),
        "hdl": np.clip(rng.normal(52, 9, m), 20, 110),
        "tg": np.clip(np.exp(np.log(105) + 0.15 * u + rng.normal(0, 0.35, m)), 30, 1500),
        "creatinine": np.clip(rng.normal(0.85, 0.15, m), 0.4, 3.0),
    }
    canon["tc"] = canon["ldl"] + canon["hdl"] + canon["tg"] / 5
    test_p = {"height": 0.9, "weight": 0.9, "hba1c": 0.35, "glucose": 0.35}
    for field, levels in UNIT_LEVELS.items():
        v = canon[field].copy()
        present = seen & (rng.random(m) < test_p.get(field, 0.3))
        alt = rng.random(m) < 0.5 if field in ("height", "weight") else si
        conv = {
            "height": lambda x: x / 2.54,
            "weight": lambda x: x / 0.45359237,
            "hba1c": lambda x: (x - 2.152) / 0.09148,
            "creatinine": lambda x: x * 88.4,
        }.get(field, lambda x, f=FACTORS.get(field, 1.0): x / f)
        v = np.where(alt, conv(v), v)
        unit = np.where(alt, levels[1], levels[0]).astype(object)
        unit[rng.random(m) < 0.01] = None
        wrong = rng.random(m) < 0.001
        unit[wrong & ~alt] = levels[1]
        cols[f"{field}_value"] = np.where(present, v, np.nan)
        cols[f"{field}_unit"] = [
            x if ok else None for x, ok in zip(unit.tolist(), present.tolist(), strict=True)
        ]
    cols["sbp_mmhg"] = np.where(seen, np.clip(rng.normal(128, 15, m), 85, 210), np.nan)
    for c in RX_COLUMNS + DX_COLUMNS:
        cols[c] = seen & (rng.random(m) < 0.05)
    # recorded diagnosis: a fraction of patients get dx_E11 from some year on
    t_rec = entry + rng.integers(3, 30, n)
    cols["dx_E11"] = year >= t_rec[pidx]
    codes = np.array([f"{c}{k:02d}.{d}" for c in "ABCDZ" for k in range(30) for d in range(3)])
    z = np.minimum(rng.zipf(1.3, m), len(codes)) - 1
    keep = rng.random(m) < 0.7
    cols["other_dx_code"] = [c if k else None for c, k in zip(codes[z].tolist(), keep.tolist(), strict=True)]
    df = pl.DataFrame({k: (pl.Series(k, v, strict=False)) for k, v in cols.items()})
    df = df.with_columns([pl.col(c).fill_nan(None) for c in df.columns if df[c].dtype == pl.Float64])
    return (
        df.cast(
            {
                k: (pl.String if isinstance(v, pl.Enum | pl.Categorical) else v)
                for k, v in OBSERVED_SCHEMA.items()
            }
        )
        .cast(OBSERVED_SCHEMA)
        .select(list(OBSERVED_SCHEMA))
    )


def synthetic_truth(raw: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """A truth table consistent in shape with the contract (hazard, onset/recorded years per patient)."""
    rng = np.random.default_rng(seed + 1)
    per = (
        raw.group_by("patient_id")
        .agg(
            pl.col("year").min().alias("y0"),
            pl.col("year").max().alias("y1"),
            pl.col("year").filter(pl.col("dx_E11")).min().alias("rec"),
        )
        .sort("patient_id")
    )
    rows = []
    for pid, y0, y1, rec in per.iter_rows():
        onset = None if rec is None else int(rec) - int(rng.integers(0, 3))
        for y in range(int(y0), int(y1) + 6):
            rows.append((pid, y, float(rng.uniform(0.005, 0.05)), onset, rec))
    return pl.DataFrame(
        rows, schema=["patient_id", "year", "hazard", "onset_year", "recorded_year"], orient="row"
    ).with_columns(
        pl.col("year").cast(pl.Int16),
        pl.col("hazard").cast(pl.Float32),
        pl.col("onset_year").cast(pl.Int16),
        pl.col("recorded_year").cast(pl.Int16),
        pl.lit(5.5, dtype=pl.Float32).alias("g_latent"),
        pl.lit(None, dtype=pl.Int8).alias("delay"),
        pl.lit(False).alias("false_code"),
        pl.lit(True).alias("enrolled"),
    )
