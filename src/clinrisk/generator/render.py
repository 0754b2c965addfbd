"""Turn a simulated chunk into the observed and truth tables: recording rules, units layer, faults."""

from __future__ import annotations

import numpy as np
import polars as pl

from clinrisk.config import GenerateConfig
from clinrisk.generator.schema import (
    DX_COLUMNS,
    ETHNICITY_LEVELS,
    INSURANCE_LEVELS,
    LAB_FIELDS,
    OBSERVED_SCHEMA,
    REGION_LEVELS,
    SEX_LEVELS,
    TRUTH_SCHEMA,
    UNIT_LEVELS,
    other_dx_codes,
)
from clinrisk.generator.simulate import DX_ORDER, SITES_PER_REGION, ChunkResult

# canonical → alternative unit, and reporting precision (decimals) in each unit
IFCC_SLOPE, IFCC_NGSP_OFFSET = 10.929, 2.15


def _to_alt(field: str, v: np.ndarray) -> np.ndarray:
    if field == "hba1c":
        return IFCC_SLOPE * (v - IFCC_NGSP_OFFSET)  # IFCC master equation (affine, not a unit factor)
    factor = {
        "height": 1 / 2.54,
        "weight": 1 / 0.45359237,
        "glucose": 1 / 18.016,
        "ldl": 1 / 38.67,
        "hdl": 1 / 38.67,
        "tc": 1 / 38.67,
        "tg": 1 / 88.57,
        "creatinine": 88.4,
    }[field]
    return v * factor


DECIMALS: dict[str, tuple[int, int]] = {
    "height": (1, 1),
    "weight": (1, 1),
    "hba1c": (1, 0),
    "glucose": (0, 1),
    "ldl": (0, 2),
    "hdl": (0, 2),
    "tc": (0, 2),
    "tg": (0, 2),
    "creatinine": (2, 0),
}
VALUE_FIELDS = ["height", "weight", "sbp", *LAB_FIELDS]  # MCAR applies to each independently
UNIT_FIELDS = ["height", "weight", *LAB_FIELDS]
N_ROW_UNIFORMS = 1 + len(VALUE_FIELDS) + 2 * len(UNIT_FIELDS) + 1

_ENUM_BASE: dict[str, pl.Series] = {}


def _enum(levels: list[str], idx: np.ndarray, null: np.ndarray | None = None) -> pl.Series:
    key = "\x1f".join(levels)
    base = _ENUM_BASE.get(key)
    if base is None:
        base = _ENUM_BASE[key] = pl.Series(levels, dtype=pl.Enum(levels))
    s = pl.Series(idx.astype(np.uint32))
    if null is not None and null.any():
        s = s.scatter(np.flatnonzero(null), None)
    return base.gather(s)


_CODES: pl.Series | None = None


def _other_codes() -> pl.Series:
    global _CODES
    if _CODES is None:
        _CODES = pl.Series(other_dx_codes(), dtype=pl.String)
    return _CODES


def si_site(cfg: GenerateConfig, region: np.ndarray, site_id: np.ndarray) -> np.ndarray:
    """Sites reporting SI lab units: all of region W and the first share of NE sites (§1.8)."""
    n_ne_si = round(cfg.ne_si_site_share * SITES_PER_REGION[0])
    return (region == REGION_LEVELS.index("W")) | (
        (region == REGION_LEVELS.index("NE")) & (site_id % 100 < n_ne_si)
    )


def render_chunk(cfg: GenerateConfig, res: ChunkResult) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Observed rows (enrolled years ≤ E) and truth rows (alive years ≤ E + followup) of kept patients."""
    assert res.rng is not None
    m = res.mats
    y0, e_year = cfg.first_year, cfg.last_year
    n_obs = e_year - y0 + 1
    years = res.years
    keep = res.keep
    rec = res.recorded_year
    entry = res.statics["entry_year"]

    # a recorded diagnosis needs a visit: the first enrolled year at or after T_rec gets one
    visits = m["visits"]
    enrolled = m["enrolled"]
    has_rec = keep & (rec >= 0)
    force_year = np.maximum(rec, entry)
    fj = force_year - y0
    idx = np.flatnonzero(has_rec & (fj < n_obs))
    if idx.size:
        ok = enrolled[fj[idx], idx]
        ii, jj = idx[ok], fj[idx][ok]
        visits[jj, ii] = np.maximum(visits[jj, ii], 1)

    obs_mask = enrolled[:n_obs].T & keep[:, None]
    pi, yj = np.nonzero(obs_mask)  # row-major → sorted by (patient_id, year)
    n_rows = pi.size
    yr = years[yj]
    v = visits[yj, pi]
    seen = v >= 1
    rec_row = rec[pi]
    post_dx = (rec_row >= 0) & (yr >= rec_row)
    dx_e11 = post_dx & seen
    since = yr - rec_row
    rx_met = (m["rx_metformin"][yj, pi] | (post_dx & (m["metformin_u"][yj, pi] < 0.85))) & seen
    p_ins = np.minimum(0.05 + 0.03 * since, 0.5)
    rx_ins = post_dx & seen & (m["insulin_u"][yj, pi] < p_ins)

    # per-row uniforms for the units layer and MCAR, drawn block by block
    bounds = np.cumsum([0, *res.block_sizes])
    rows_per_block = np.diff(np.searchsorted(pi, bounds)).tolist()
    uu = res.rng.uniform_rows(N_ROW_UNIFORMS, rows_per_block)
    imperial = uu[0] < cfg.imperial_vitals_share
    mcar = {f: uu[1 + i] < cfg.mcar_rate for i, f in enumerate(VALUE_FIELDS)}
    base_u = 1 + len(VALUE_FIELDS)
    u_null = {f: uu[base_u + i] for i, f in enumerate(UNIT_FIELDS)}
    u_wrong = {f: uu[base_u + len(UNIT_FIELDS) + i] for i, f in enumerate(UNIT_FIELDS)}
    u_mislabel = uu[-1]

    st = res.statics
    region = st["region"][pi]
    site_id = st["site_id"][pi]
    si = si_site(cfg, region, site_id)

    cols: dict[str, pl.Series] = {
        "patient_id": pl.Series(res.patient_id[pi]),
        "year": pl.Series(yr.astype(np.int16)),
        "sex": _enum(SEX_LEVELS, st["male"][pi].astype(np.int64)),
        "birth_year": pl.Series(st["birth_year"][pi].astype(np.int16)),
        "region": _enum(REGION_LEVELS, region),
        "site_id": pl.Series(site_id.astype(np.int16)),
        "ethnicity": _enum(ETHNICITY_LEVELS, st["ethnicity"][pi]),
        "entry_year": pl.Series(entry[pi].astype(np.int16)),
        "insurance": _enum(INSURANCE_LEVELS, m["insurance"][yj, pi]),
        "family_history": pl.Series(st["family_history"][pi]),
        "visits": pl.Series(np.minimum(v, 255).astype(np.uint8)),
    }
    for f in VALUE_FIELDS:
        val = m[f][yj, pi].astype(np.float64)
        val = np.where(mcar[f], np.nan, val)
        if f == "sbp":
            cols["sbp_mmhg"] = pl.Series(np.round(val).astype(np.float32)).fill_nan(None)
            continue
        present = ~np.isnan(val)
        unit = (imperial if f in ("height", "weight") else si).astype(np.int64)
        d0, d1 = DECIMALS[f]
        rendered = np.where(unit == 1, np.round(_to_alt(f, val), d1), np.round(val, d0))
        label = unit.copy()
        wrong = u_wrong[f] < cfg.unit_wrong_label_rate
        label = np.where(wrong, 1 - label, label)  # value stays in its own scale, label flips
        if f == "hba1c":
            label = np.where((unit == 0) & (u_mislabel < cfg.hba1c_mislabel_rate), 1, label)
        null_unit = (~present) | (u_null[f] < cfg.unit_null_rate)
        cols[f"{f}_value"] = pl.Series(rendered.astype(np.float32)).fill_nan(None)
        cols[f"{f}_unit"] = _enum(UNIT_LEVELS[f], label, null_unit)
    cols["rx_statin"] = pl.Series(m["rx_statin"][yj, pi])
    cols["rx_antihypertensive"] = pl.Series(m["rx_antihypertensive"][yj, pi])
    cols["rx_glucocorticoid"] = pl.Series(m["rx_glucocorticoid"][yj, pi])
    cols["rx_antipsychotic"] = pl.Series(m["rx_antipsychotic"][yj, pi])
    cols["rx_metformin"] = pl.Series(rx_met)
    cols["rx_insulin"] = pl.Series(rx_ins)
    for code, col in zip(DX_ORDER, DX_COLUMNS, strict=True):
        cols[col] = pl.Series(m[f"dx_{code}"][yj, pi])
    cols["dx_E11"] = pl.Series(dx_e11)
    other = m["other_dx"][yj, pi].astype(np.int64)
    other_idx = pl.Series(np.maximum(other, 0).astype(np.uint32))
    if (other < 0).any():
        other_idx = other_idx.scatter(np.flatnonzero(other < 0), None)
    cols["other_dx_code"] = _other_codes().gather(other_idx).cast(pl.Categorical)
    observed = pl.DataFrame([s.alias(name) for name, s in cols.items()])
    observed = observed.select([pl.col(c).cast(t) for c, t in OBSERVED_SCHEMA.items()])
    if observed.height != n_rows:  # pragma: no cover - internal invariant
        raise AssertionError("row count changed while rendering")

    # truth: every alive year first_year .. E + followup of kept patients
    t_mask = m["alive"].T & keep[:, None]
    ti, tj = np.nonzero(t_mask)
    onset = res.onset_year[ti]
    has_onset = onset >= 0
    rec_t = rec[ti]
    # D is set at onset in parametric mode; in mechanistic mode only once the clinical diagnosis happens
    no_delay = ~has_onset | ((res.dx_year[ti] < 0) & (cfg.delay_mode == "mechanistic"))
    truth = pl.DataFrame(
        [
            pl.Series("patient_id", res.patient_id[ti]),
            pl.Series("year", years[tj].astype(np.int16)),
            pl.Series("g_latent", m["g_latent"][tj, ti]),
            pl.Series("hazard", m["hazard"][tj, ti]),
            pl.Series("onset_year", np.where(has_onset, onset, 0).astype(np.int16)).scatter(
                np.flatnonzero(~has_onset), None
            ),
            pl.Series("recorded_year", np.where(rec_t >= 0, rec_t, 0).astype(np.int16)).scatter(
                np.flatnonzero(rec_t < 0), None
            ),
            pl.Series("delay", np.where(no_delay, 0, res.delay[ti]).astype(np.int8)).scatter(
                np.flatnonzero(no_delay), None
            ),
            pl.Series("false_code", res.false_code[ti]),
            pl.Series("enrolled", m["enrolled"][tj, ti]),
        ]
    )
    truth = truth.select([pl.col(c).cast(t) for c, t in TRUTH_SCHEMA.items()])
    return observed, truth
