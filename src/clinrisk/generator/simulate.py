"""The yearly state machine of docs/science.md §1.2–1.7, vectorised over the patients of a chunk of blocks.

Every random draw comes from the generator of the patient's RNG block (one ``SeedSequence`` child per
block of ``block_size`` patients), in a fixed call order, so a patient's data does not depend on which
other blocks share the chunk, shard or worker process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clinrisk.config import GenerateConfig

WARMUP_YEARS = 5  # simulated before first_year so EWMAs and the 3-year slope exist from the start
PILOT_SPAWN_KEY = 0x7FFF_FFFF
# The E11 coding draws come from their own SeedSequence subtree, so the coding-drift settings never shift the
# main stream: the same seed gives the same onsets and physiology whatever the coding drift.
CODING_SPAWN_KEY = 0x7FFF_FFFE
YEAR_UNIFORMS, YEAR_NORMALS = (
    39,
    17,
)  # per patient-year draws (pools; fixed counts keep streams stable)  # separates the α-calibration pilot stream from the data blocks

DELAY_SUPPORT = np.array([-1, 0, 1, 2, 3], dtype=np.int64)
DELAY_PMFS = {
    "none": [0.0, 1.0, 0.0, 0.0, 0.0],
    "default": [0.05, 0.40, 0.30, 0.15, 0.10],
    "severe": [0.05, 0.15, 0.25, 0.25, 0.30],
}

# §1.2 static attribute distributions.
P_MALE = 0.49
REGION_P = [0.17, 0.21, 0.38, 0.24]  # NE, MW, S, W
SITES_PER_REGION = [20, 25, 40, 25]
ETHNICITY_P = [0.60, 0.13, 0.18, 0.06, 0.03]  # White, Black, Hispanic, Asian, Other
INSURANCE_P_UNDER65 = [0.62, 0.20, 0.18]  # commercial, medicaid, uninsured (medicare from 65)
INSURANCE_SWITCH = 0.08  # yearly chance an under-65 patient re-draws insurance (design choice)
INS_COMMERCIAL, INS_MEDICAID, INS_MEDICARE, INS_UNINSURED = 0, 1, 2, 3
ETH_BLACK, ETH_HISPANIC, ETH_ASIAN = 1, 2, 3

# §1.4 observation process details not fixed by the memo (design choices, documented).
P_HBA1C_GIVEN_TEST = 0.85
P_FPG_GIVEN_TEST = 0.7
P_VITALS = 0.9
ZIPF_EXPONENT = 1.1
P_OTHER_DX = 0.7

# §1.5 coding sensitivities at E; secular drift lowers them earlier by (1 + r)^(t − E), see coding_multiplier.
SENS = {
    "I10": 0.8,
    "E78": 0.7,
    "E66": 0.5,
    "R73": 0.6,
    "E28_2": 0.5,
    "O24_4": 0.4,
    "I25": 0.85,
    "K76_0": 0.3,
    "G47_33": 0.4,
}
DX_ORDER = ["I10", "E78", "E66", "R73", "E28_2", "O24_4", "I25", "K76_0", "G47_33"]
RX_ORDER = ["statin", "antihypertensive", "glucocorticoid", "antipsychotic", "metformin", "insulin"]


def delay_pmf(cfg: GenerateConfig) -> np.ndarray:
    """The configured pmf of D over {-1, 0, 1, 2, 3}."""
    pmf = cfg.delay_pmf if cfg.delay_pmf is not None else DELAY_PMFS[cfg.delay_severity]
    return np.asarray(pmf, dtype=np.float64)


def block_seed(seed: int, block: int, pilot: bool = False) -> np.random.SeedSequence:
    """The SeedSequence child of one patient block (pilot blocks live in their own subtree)."""
    key = (PILOT_SPAWN_KEY, block) if pilot else (block,)
    return np.random.SeedSequence(entropy=seed, spawn_key=key)


def coding_seed(seed: int, block: int, pilot: bool = False) -> np.random.SeedSequence:
    """The SeedSequence of one block's E11 coding draws, disjoint from ``block_seed``'s subtree."""
    key = (CODING_SPAWN_KEY, PILOT_SPAWN_KEY, block) if pilot else (CODING_SPAWN_KEY, block)
    return np.random.SeedSequence(entropy=seed, spawn_key=key)


def coding_multiplier(cfg: GenerateConfig, year: np.ndarray | int) -> np.ndarray:
    """Coding-sensitivity multiplier of calendar ``year``: ``(1 + r)^(t − E)`` under secular drift, else 1.

    It is 1 at E (the memo's sensitivities and delay pmf describe E) and falls by the factor 1/(1 + r) per year
    before it; warm-up years use ``first_year``'s value. Callers cap sensitivity × multiplier at 1."""
    t = np.maximum(np.asarray(year, dtype=np.float64), cfg.first_year)
    if not cfg.secular_drift:
        return np.ones_like(t)
    return np.power(1.0 + cfg.secular_coding_per_year, t - cfg.last_year)


def coding_miss_years(cfg: GenerateConfig, dx_year: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Years the E11 code is missed after the clinical diagnosis in ``dx_year`` (−1: none).

    Each year t from ``dx_year`` on, the diagnosis is coded with probability ``min(1, coding_multiplier(t))``
    (1 at E and after). One uniform per patient decides: M = #{m ≥ 1 : u < Π_{i<m} (1 − s(dx_year + i))},
    so the true course is untouched and only the recorded year ``dx_year + M`` moves."""
    miss = np.zeros(dx_year.shape, dtype=np.int64)
    has = dx_year >= 0
    if not has.any() or not cfg.secular_drift or cfg.secular_coding_per_year == 0:
        return miss
    start = np.where(has, dx_year, cfg.last_year)
    surv = np.where(has, 1.0, 0.0)
    for i in range(max(cfg.last_year - int(start.min()), 0) + 1):
        surv = surv * (1.0 - np.minimum(coding_multiplier(cfg, start + i), 1.0))
        miss += u < surv
    return miss


class BlockRNG:
    """Draws from per-block generators and concatenates them in block order."""

    def __init__(self, seeds: list[np.random.SeedSequence], sizes: list[int]) -> None:
        self.gens = [np.random.Generator(np.random.PCG64(s)) for s in seeds]
        self.sizes = sizes
        self.bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._pool_u: np.ndarray | None = None
        self._pool_z: np.ndarray | None = None
        self._iu = self._iz = 0

    def refill(self, n_u: int, n_z: int) -> None:
        """Pre-draw one year's uniforms and normals in two calls per block (speed); later
        ``uniform``/``normal`` calls pop rows from the pools in order."""
        self._pool_u = self._cat1([g.random((n_u, n)) for g, n in zip(self.gens, self.sizes, strict=True)])
        self._pool_z = self._cat1(
            [g.standard_normal((n_z, n)) for g, n in zip(self.gens, self.sizes, strict=True)]
        )
        self._iu = self._iz = 0

    def _cat1(self, parts: list[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def end_pools(self) -> None:
        """Back to direct per-call draws."""
        self._pool_u = self._pool_z = None

    def _cat(self, parts: list[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def uniform(self) -> np.ndarray:
        if self._pool_u is not None:
            if self._iu >= self._pool_u.shape[0]:
                raise RuntimeError("BlockRNG: uniform pool exhausted")
            self._iu += 1
            return self._pool_u[self._iu - 1]
        return self._cat([g.random(n) for g, n in zip(self.gens, self.sizes, strict=True)])

    def normal(self) -> np.ndarray:
        if self._pool_z is not None:
            if self._iz >= self._pool_z.shape[0]:
                raise RuntimeError("BlockRNG: normal pool exhausted")
            self._iz += 1
            return self._pool_z[self._iz - 1]
        return self._cat([g.standard_normal(n) for g, n in zip(self.gens, self.sizes, strict=True)])

    def gamma(self, shape: float) -> np.ndarray:
        return self._cat([g.standard_gamma(shape, n) for g, n in zip(self.gens, self.sizes, strict=True)])

    def poisson(self, lam: np.ndarray) -> np.ndarray:
        b = self.bounds
        return self._cat([g.poisson(lam[b[i] : b[i + 1]]) for i, g in enumerate(self.gens)])

    def categorical(self, p: list[float] | np.ndarray) -> np.ndarray:
        cdf = np.cumsum(p)
        cdf[-1] = 1.0 + 1e-12
        return np.searchsorted(cdf, self.uniform(), side="right").astype(np.int64)

    def uniform_rows(self, k: int, rows_per_block: list[int]) -> np.ndarray:
        """``k`` float32 uniforms per output row, rows taken block by block."""
        parts = [g.random((k, n), dtype=np.float32) for g, n in zip(self.gens, rows_per_block, strict=True)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Statics:
    """Per-patient attributes drawn once, before the first simulated year (§1.2), plus the per-patient
    uniforms that later steps consume (delay shift, false codes)."""

    male: np.ndarray
    age0: np.ndarray
    birth_year: np.ndarray
    region: np.ndarray
    site_id: np.ndarray
    ethnicity: np.ndarray
    famhx: np.ndarray
    famhx_rec: np.ndarray
    u: np.ndarray  # latent insulin resistance
    height: np.ndarray
    bmi_mu: np.ndarray
    entry: np.ndarray
    pcos: np.ndarray
    gdm: np.ndarray
    insurance: np.ndarray  # at first_year
    z_nafld: np.ndarray
    z_osa: np.ndarray
    creat_base: np.ndarray
    d_base: np.ndarray
    shift_u: np.ndarray
    false_u: np.ndarray
    false_year_u: np.ndarray
    eth_risk: np.ndarray
    black: np.ndarray


@dataclass
class State:
    """What carries over from one simulated year to the next (treatment, disease, AR(1) residuals, EWMAs)."""

    insurance: np.ndarray
    e_bmi: np.ndarray
    e_g: np.ndarray
    e_sbp: np.ndarray
    e_ldl: np.ndarray
    e_hdl: np.ndarray
    e_tg: np.ndarray
    alive: np.ndarray
    left: np.ndarray
    onset: np.ndarray
    t_rec: np.ndarray  # clinical diagnosis year; int64 max until diagnosed
    delay: np.ndarray
    pending_confirm: np.ndarray
    on_statin: np.ndarray
    on_ah: np.ndarray
    on_antipsych: np.ndarray
    on_met_pre: np.ndarray
    ever_r73: np.ndarray
    prior_high: np.ndarray
    cvd: np.ndarray
    sbp_prev: np.ndarray
    sbp150_years: np.ndarray
    ldl_prev: np.ndarray
    g_ewma: np.ndarray
    b_ewma: np.ndarray
    eta_prev: np.ndarray


@dataclass
class Body:
    """One year's physiology in canonical units (§1.3) and the patient's disease status that year."""

    age: np.ndarray
    bmi: np.ndarray
    g_pre: np.ndarray  # disease-free glycaemic path (drives the hazard)
    g: np.ndarray  # glycaemia actually present (post-onset rise, treatment after diagnosis)
    sbp: np.ndarray
    tg: np.ndarray
    hdl: np.ndarray
    ldl_untreated: np.ndarray
    ldl: np.ndarray
    tc: np.ndarray
    creat: np.ndarray
    has_onset: np.ndarray
    diagnosed: np.ndarray


@dataclass
class Conditions:
    """True comorbid conditions of the year (§1.5), before any coding."""

    htn: np.ndarray
    hyperlip: np.ndarray
    obese: np.ndarray
    nafld: np.ndarray
    osa: np.ndarray
    n_comorb: np.ndarray


@dataclass
class GlycaemicTests:
    """The year's HbA1c / fasting glucose orders and measured values (§1.4)."""

    tested: np.ndarray
    a1c_done: np.ndarray
    fpg_done: np.ndarray
    a1c_meas: np.ndarray
    fpg_meas: np.ndarray


@dataclass
class OtherMeasurements:
    """Lipids, creatinine and vitals as the lab and clinic report them (§1.4)."""

    lip_done: np.ndarray
    cr_done: np.ndarray
    tc_m: np.ndarray
    hdl_m: np.ndarray
    tg_m: np.ndarray
    ldl_m: np.ndarray
    cr_m: np.ndarray
    vit_done: np.ndarray
    sbp_done: np.ndarray
    height_m: np.ndarray
    weight_m: np.ndarray
    sbp_m: np.ndarray


@dataclass
class Background:
    """The year's outcome-independent draws: noise code, steroid exposure, post-diagnosis drug uniforms."""

    other: np.ndarray
    other_present: np.ndarray
    steroid: np.ndarray
    met_u: np.ndarray
    ins_u: np.ndarray


@dataclass
class ChunkResult:
    """Per-patient statics and (year × patient) matrices over years first_year .. E + followup."""

    years: np.ndarray
    patient_id: np.ndarray
    statics: dict[str, np.ndarray]
    mats: dict[str, np.ndarray]
    onset_year: np.ndarray  # -1 when none
    recorded_year: np.ndarray  # -1 when never recorded (while alive, by E + followup)
    dx_year: np.ndarray  # clinical diagnosis year T* + D (-1 when none); recorded_year adds coding misses
    delay: np.ndarray  # D = dx_year − onset (valid where onset_year >= 0)
    false_code: np.ndarray
    keep: np.ndarray  # passes washout and has at least one enrolled year
    eta0: np.ndarray  # η without α for the hazard of year j (state through year j - 1)
    onset_u: np.ndarray
    block_sizes: list[int] = field(default_factory=list)
    rng: BlockRNG | None = None


# Every function below draws from ``rng`` in a fixed order; simulate_chunk calls them in that order each
# year, which is what keeps a seed's data byte-identical.


def draw_statics(cfg: GenerateConfig, rng: BlockRNG, n: int) -> Statics:
    """§1.2 static attributes."""
    y0 = cfg.first_year
    male = rng.uniform() < P_MALE
    age0 = 30 + np.floor(rng.uniform() * 43).astype(np.int64)  # U{30..72} at first_year
    birth_year = y0 - age0
    region = rng.categorical(REGION_P)
    site_u = rng.uniform()
    n_sites = np.asarray(SITES_PER_REGION)[region]
    site_k = np.minimum(np.floor(site_u * n_sites).astype(np.int64), n_sites - 1)
    site_id = (region + 1) * 100 + site_k
    ethnicity = rng.categorical(ETHNICITY_P)
    famhx = rng.uniform() < 0.30
    famhx_rec = famhx & (rng.uniform() < 0.6)
    u = rng.normal()
    height = np.where(male, 176.0, 162.0) + 7.0 * rng.normal()
    bmi_mu = np.exp(np.log(27.5) + 0.16 * rng.normal())
    bmi_mu += 1.0 * (ethnicity == ETH_BLACK) - 2.5 * (ethnicity == ETH_ASIAN) + 0.7 * (region == 2)
    geo = np.floor(np.log(np.maximum(rng.uniform(), 1e-300)) / np.log1p(-cfg.entry_geometric_p))
    entry = y0 + (geo.astype(np.int64) if cfg.entry_geometric_p < 1 else np.zeros(n, np.int64))
    young_f = (~male) & (entry - birth_year < 50)
    pcos = young_f & (rng.uniform() < 0.06)
    gdm = young_f & (rng.uniform() < 0.05)
    insurance = rng.categorical(INSURANCE_P_UNDER65)
    insurance = np.where(insurance == 2, INS_UNINSURED, insurance)
    z_nafld = rng.normal()
    z_osa = rng.normal()
    creat_base = np.maximum(np.where(male, 0.95 + 0.18 * rng.normal(), 0.75 + 0.14 * rng.normal()), 0.4)
    d_base = DELAY_SUPPORT[rng.categorical(delay_pmf(cfg))]
    shift_u = rng.uniform()
    false_u = rng.uniform()
    false_year_u = rng.uniform()
    return Statics(
        male=male,
        age0=age0,
        birth_year=birth_year,
        region=region,
        site_id=site_id,
        ethnicity=ethnicity,
        famhx=famhx,
        famhx_rec=famhx_rec,
        u=u,
        height=height,
        bmi_mu=bmi_mu,
        entry=entry,
        pcos=pcos,
        gdm=gdm,
        insurance=insurance,
        z_nafld=z_nafld,
        z_osa=z_osa,
        creat_base=creat_base,
        d_base=d_base,
        shift_u=shift_u,
        false_u=false_u,
        false_year_u=false_year_u,
        eth_risk=np.isin(ethnicity, [ETH_BLACK, ETH_HISPANIC, ETH_ASIAN]),
        black=ethnicity == ETH_BLACK,
    )


def initial_state(rng: BlockRNG, statics: Statics, n: int) -> State:
    """AR(1) residuals from their stationary distributions (AR(ρ,σ): e_t = ρe_{t-1} + N(0,σ²)); no disease,
    no treatment, everyone alive."""
    e_bmi = rng.normal() * 0.65 / np.sqrt(1 - 0.85**2)
    e_g = rng.normal() * 0.07 / np.sqrt(1 - 0.8**2)
    e_sbp = rng.normal() * 9.0 / np.sqrt(1 - 0.6**2)
    # LDL: AR 0.7 with marginal SD 32 (memo); HDL/TG: memo gives marginal SDs, persistence is ours.
    e_ldl = rng.normal() * 32.0
    e_hdl = rng.normal() * 9.0
    e_tg = rng.normal() * 0.35
    never = np.zeros(n, dtype=bool)
    return State(
        insurance=statics.insurance,
        e_bmi=e_bmi,
        e_g=e_g,
        e_sbp=e_sbp,
        e_ldl=e_ldl,
        e_hdl=e_hdl,
        e_tg=e_tg,
        alive=np.ones(n, dtype=bool),
        left=never.copy(),
        onset=np.full(n, -1, dtype=np.int64),
        t_rec=np.full(n, np.iinfo(np.int64).max, dtype=np.int64),
        delay=np.zeros(n, dtype=np.int64),
        pending_confirm=never.copy(),
        on_statin=never.copy(),
        on_ah=never.copy(),
        on_antipsych=never.copy(),
        on_met_pre=never.copy(),
        ever_r73=never.copy(),
        prior_high=never.copy(),
        cvd=never.copy(),
        sbp_prev=np.zeros(n),
        sbp150_years=np.zeros(n),
        ldl_prev=np.full(n, 120.0),
        g_ewma=np.zeros(n),
        b_ewma=np.zeros(n),
        eta_prev=np.full(n, -np.inf),
    )


def allocate_outputs(n_out: int, n: int) -> dict[str, np.ndarray]:
    """The (output year × patient) matrices, empty (NaN measurements, no codes)."""
    f32 = np.float32
    mats: dict[str, np.ndarray] = {
        name: np.full((n_out, n), np.nan, dtype=f32)
        for name in (
            "g_latent",
            "hazard",
            "height",
            "weight",
            "sbp",
            "hba1c",
            "glucose",
            "ldl",
            "hdl",
            "tc",
            "tg",
            "creatinine",
        )
    }
    for name in ("alive", "enrolled", "metformin_u", "insulin_u"):
        mats[name] = np.zeros((n_out, n), dtype=bool if name in ("alive", "enrolled") else f32)
    mats["visits"] = np.zeros((n_out, n), dtype=np.int64)
    mats["insurance"] = np.zeros((n_out, n), dtype=np.int8)
    mats["other_dx"] = np.full((n_out, n), -1, dtype=np.int16)
    for name in RX_ORDER[:5]:
        mats[f"rx_{name}"] = np.zeros((n_out, n), dtype=bool)
    for code in DX_ORDER:
        mats[f"dx_{code}"] = np.zeros((n_out, n), dtype=bool)
    return mats


def update_insurance(rng: BlockRNG, st: State, age: np.ndarray) -> None:
    """Markov re-draws under 65, Medicare from 65 (the uninsured too)."""
    switch = rng.uniform() < INSURANCE_SWITCH
    redraw = rng.categorical(INSURANCE_P_UNDER65)
    redraw = np.where(redraw == 2, INS_UNINSURED, redraw)
    insurance = np.where(switch & (st.insurance != INS_MEDICARE), redraw, st.insurance)
    st.insurance = np.where(age >= 65, INS_MEDICARE, insurance)


def fire_onsets(
    cfg: GenerateConfig, statics: Statics, st: State, t: int, alpha: float, u_on: np.ndarray
) -> None:
    """Onset in year t from the state through t − 1 (§1.6); parametric mode sets D at onset (§1.7a)."""
    h = -np.expm1(-np.exp(alpha + st.eta_prev))
    fire = st.alive & (st.onset < 0) & (u_on < h)
    if not fire.any():
        return
    st.onset[fire] = t
    if cfg.delay_mode == "mechanistic":
        return
    uninsured = st.insurance == INS_UNINSURED
    d = statics.d_base[fire].copy()
    shift = uninsured[fire] & (d >= 0) & (statics.shift_u[fire] < cfg.uninsured_delay_shift_prob)
    d += shift
    st.delay[fire] = d
    st.t_rec[fire] = t + d


def step_residuals(rng: BlockRNG, st: State) -> None:
    """Advance the AR(1) residuals one year."""
    st.e_bmi = 0.85 * st.e_bmi + 0.65 * rng.normal()
    st.e_g = 0.8 * st.e_g + 0.07 * rng.normal()
    st.e_sbp = 0.6 * st.e_sbp + 9.0 * rng.normal()
    st.e_ldl = 0.7 * st.e_ldl + 32.0 * np.sqrt(1 - 0.7**2) * rng.normal()
    st.e_hdl = 0.8 * st.e_hdl + 9.0 * np.sqrt(1 - 0.8**2) * rng.normal()
    st.e_tg = 0.7 * st.e_tg + 0.35 * np.sqrt(1 - 0.7**2) * rng.normal()


def physiology(cfg: GenerateConfig, s: Statics, st: State, t: int, calendar: int) -> Body:
    """Year t's physiology in canonical units (§1.3); counts the years with SBP > 150 (no draws)."""
    age = t - s.birth_year
    drift = cfg.secular_drift
    bmi = (
        s.bmi_mu
        + 0.10 * np.maximum(np.minimum(age, 65) - s.age0, 0)
        - 0.10 * np.maximum(age - 70, 0)
        + (cfg.secular_bmi_per_year * calendar if drift else 0.0)
        + st.e_bmi
    )
    bmi = np.clip(bmi, 16.0, 60.0)
    g_pre = (
        5.05
        + 0.012 * (age - 40)
        + 0.035 * (bmi - 27)
        + 0.22 * s.u
        + 0.10 * s.famhx
        + 0.035 * np.maximum(s.u, 0) * calendar
        + st.e_g
    )
    g_pre = np.clip(g_pre, 4.3, 6.4)
    has_onset = (st.onset >= 0) & (t >= st.onset)
    diagnosed = t >= st.t_rec
    g = g_pre.copy()
    if has_onset.any():
        post = np.maximum(g_pre, 6.5) + 0.5 + 0.15 * (t - st.onset)
        post = np.clip(post, 6.5, 14.0) - 0.8 * diagnosed
        g = np.where(has_onset, post, g_pre)
    sbp = np.clip(
        108 + 0.45 * (age - 30) + 0.7 * (bmi - 27) + 4.0 * s.male + st.e_sbp - 10.0 * st.on_ah, 80, 220
    )
    tg = np.clip(np.exp(np.log(105) + 0.03 * (bmi - 27) + 0.15 * s.u + st.e_tg), 30, 1500)
    hdl = np.clip(56 - 9.0 * s.male - 0.6 * (bmi - 27) - 3.0 * s.u + st.e_hdl, 20, 110)
    ldl_untreated = 112 + 0.3 * (age - 50) + st.e_ldl
    ldl = np.clip(ldl_untreated * np.where(st.on_statin, 0.65, 1.0), 30, 300)
    tc = ldl + hdl + tg / 5.0
    st.sbp150_years += sbp > 150
    creat = s.creat_base + 0.004 * np.maximum(age - 40, 0)
    creat = np.clip(creat * np.where(st.sbp150_years > 3, 1.15, 1.0), 0.3, 10.0)
    return Body(
        age=age,
        bmi=bmi,
        g_pre=g_pre,
        g=g,
        sbp=sbp,
        tg=tg,
        hdl=hdl,
        ldl_untreated=ldl_untreated,
        ldl=ldl,
        tc=tc,
        creat=creat,
        has_onset=has_onset,
        diagnosed=diagnosed,
    )


def true_conditions(rng: BlockRNG, s: Statics, st: State, b: Body) -> Conditions:
    """True comorbid conditions and CVD incidence."""
    age = b.age
    st.cvd |= st.alive & (
        rng.uniform()
        < _sigmoid(-6.2 + 0.065 * (age - 50) + 0.5 * s.male + 0.015 * (b.sbp - 125) + 0.008 * (b.ldl - 120))
    )
    htn = st.on_ah | ((b.sbp >= 140) & (st.sbp_prev >= 140))
    hyperlip = (b.ldl_untreated >= 160) | (b.tc >= 240) | st.on_statin
    obese = b.bmi >= 30
    nafld = 0.35 * (b.bmi - 27) + 0.6 * s.u + s.z_nafld > 1.8
    osa = 0.3 * (b.bmi - 30) + 0.6 * s.male + 0.03 * (age - 50) + s.z_osa > 1.2
    n_comorb = htn.astype(np.int64) + hyperlip + obese + s.pcos + s.gdm + st.cvd + nafld + osa
    return Conditions(htn=htn, hyperlip=hyperlip, obese=obese, nafld=nafld, osa=osa, n_comorb=n_comorb)


def utilisation(rng: BlockRNG, st: State, b: Body, c: Conditions) -> np.ndarray:
    """Visits: NegBin(mean μ, size 2) as a gamma–Poisson mixture (§1.4)."""
    undiagnosed = b.has_onset & ~b.diagnosed
    log_mu = (
        0.7
        + 0.015 * (b.age - 50)
        + 0.2 * c.n_comorb
        + 0.35 * undiagnosed
        + 0.1 * (st.insurance == INS_MEDICAID)
        - 0.5 * (st.insurance == INS_UNINSURED)
        + 0.4 * b.diagnosed  # diabetes care after the code (design choice)
    )
    lam = rng.gamma(2.0) * np.exp(log_mu) / 2.0
    return np.asarray(np.minimum(rng.poisson(lam), 60) * st.alive)


def glycaemic_tests(
    cfg: GenerateConfig,
    rng: BlockRNG,
    s: Statics,
    st: State,
    b: Body,
    visits: np.ndarray,
    obese: np.ndarray,
    calendar: int,
) -> GlycaemicTests:
    """Glycaemic testing: MAR (visits, BMI, age, history, insurance) + MNAR (current g) (§1.4)."""
    y0, e_year = cfg.first_year, cfg.last_year
    lin = (
        -2.2
        + 0.45 * np.minimum(visits, 6)
        + 0.7 * obese
        + 0.6 * (b.age >= 45)
        + 1.0 * st.prior_high
        - 0.6 * (st.insurance == INS_UNINSURED)
        + 1.2 * np.maximum(b.g - 6.0, 0)
        # testing drift centred on mid-calendar, so the average rate stays the memo's
        + (cfg.secular_test_logit_per_year * (calendar - (e_year - y0) / 2) if cfg.secular_drift else 0.0)
        + 2.0 * b.diagnosed  # diabetes monitoring (design choice)
    )
    tested = (visits >= 1) & (rng.uniform() < _sigmoid(lin))
    a1c_done = tested & (rng.uniform() < P_HBA1C_GIVEN_TEST)
    fpg_done = tested & (rng.uniform() < P_FPG_GIVEN_TEST)
    a1c_meas = b.g + 0.2 * s.black + 0.15 * rng.normal()
    fpg_true = np.clip(100 + 30 * (b.g - 5.7) + 8.0 * rng.normal(), 60, 400)
    fpg_meas = fpg_true * (1 + 0.05 * rng.normal())
    st.prior_high |= a1c_done & (a1c_meas >= 5.7)
    return GlycaemicTests(
        tested=tested, a1c_done=a1c_done, fpg_done=fpg_done, a1c_meas=a1c_meas, fpg_meas=fpg_meas
    )


def mechanistic_diagnosis(rng: BlockRNG, st: State, b: Body, gt: GlycaemicTests, t: int) -> None:
    """Test ≥ cut-point, confirmed (same year p=0.6, else next tested year), or symptoms (§1.7b)."""
    positive = (gt.a1c_done & (gt.a1c_meas >= 6.5)) | (gt.fpg_done & (gt.fpg_meas >= 126))
    at_risk = b.has_onset & (st.t_rec == np.iinfo(np.int64).max)
    confirm_now = rng.uniform() < 0.6
    symptomatic = rng.uniform() < -np.expm1(-0.15 * np.maximum(t - st.onset, 0))
    lag = (rng.uniform() >= 0.9).astype(np.int64)
    dx_now = at_risk & ((st.pending_confirm & gt.tested) | (positive & confirm_now) | symptomatic)
    st.pending_confirm = at_risk & ~dx_now & (st.pending_confirm | positive)
    st.t_rec = np.where(dx_now, t + lag, st.t_rec)
    st.delay = np.where(dx_now, t + lag - st.onset, st.delay)


def other_measurements(
    rng: BlockRNG, s: Statics, b: Body, visits: np.ndarray, htn: np.ndarray
) -> OtherMeasurements:
    """Lipid panel (Friedewald LDL), creatinine and vitals, each with measurement error (§1.4)."""
    seen = visits >= 1
    age = b.age
    lip_done = seen & (rng.uniform() < _sigmoid(-1.2 + 0.3 * np.minimum(visits, 6) + 0.5 * (age >= 45)))
    cr_done = seen & (
        rng.uniform() < _sigmoid(-0.8 + 0.3 * np.minimum(visits, 6) + 0.5 * (age >= 45) + 0.5 * htn)
    )
    tc_m = b.tc * (1 + 0.06 * rng.normal())
    hdl_m = b.hdl * (1 + 0.06 * rng.normal())
    tg_m = b.tg * (1 + 0.06 * rng.normal())
    ldl_direct = b.ldl * (1 + 0.06 * rng.normal())
    # the lab reports Friedewald LDL unless TG ≥ 400 mg/dL, then a direct LDL
    ldl_m = np.where(tg_m < 400, np.maximum(tc_m - hdl_m - tg_m / 5.0, 5.0), ldl_direct)
    cr_m = b.creat * (1 + 0.04 * rng.normal())
    vit_done = seen & (rng.uniform() < P_VITALS)
    sbp_done = seen & (rng.uniform() < P_VITALS)
    height_m = s.height + 0.5 * rng.normal()
    bmi_m = b.bmi + 0.5 * rng.normal()
    weight_m = bmi_m * (s.height / 100.0) ** 2
    sbp_m = b.sbp + 6.0 * rng.normal()
    return OtherMeasurements(
        lip_done=lip_done,
        cr_done=cr_done,
        tc_m=tc_m,
        hdl_m=hdl_m,
        tg_m=tg_m,
        ldl_m=ldl_m,
        cr_m=cr_m,
        vit_done=vit_done,
        sbp_done=sbp_done,
        height_m=height_m,
        weight_m=weight_m,
        sbp_m=sbp_m,
    )


def code_diagnoses(
    rng: BlockRNG,
    s: Statics,
    st: State,
    c: Conditions,
    gt: GlycaemicTests,
    seen: np.ndarray,
    coding_mult: float,
) -> dict[str, np.ndarray]:
    """Comorbidity codes recorded at visits, with under-coding and coding drift (§1.5)."""
    r73_lab = (gt.a1c_done & (gt.a1c_meas >= 5.7) & (gt.a1c_meas < 6.5)) | (
        gt.fpg_done & (gt.fpg_meas >= 100) & (gt.fpg_meas < 126)
    )
    conds = {
        "I10": c.htn,
        "E78": c.hyperlip,
        "E66": c.obese,
        "R73": r73_lab,
        "E28_2": s.pcos,
        "O24_4": s.gdm,
        "I25": st.cvd,
        "K76_0": c.nafld,
        "G47_33": c.osa,
    }
    coded = {}
    for code in DX_ORDER:
        coded[code] = seen & conds[code] & (rng.uniform() < min(SENS[code] * coding_mult, 1.0))
    coded["R73"] |= seen & st.ever_r73 & (rng.uniform() < 0.5)  # stays on the problem list
    st.ever_r73 |= coded["R73"]
    return coded


def background_draws(rng: BlockRNG, st: State, seen: np.ndarray, zipf_cdf: np.ndarray) -> Background:
    """Zipf noise code, steroid exposure and the uniforms of post-diagnosis metformin / insulin."""
    other = np.searchsorted(zipf_cdf, rng.uniform(), side="right")
    other_present = seen & (rng.uniform() < P_OTHER_DX)
    steroid = st.alive & (rng.uniform() < 0.03)
    met_u = rng.uniform()
    ins_u = rng.uniform()
    return Background(other=other, other_present=other_present, steroid=steroid, met_u=met_u, ins_u=ins_u)


def update_hazard_inputs(
    s: Statics, st: State, b: Body, steroid: np.ndarray, g_pre_hist: np.ndarray, k: int
) -> None:
    """η without α from the state through year t (for onset in t + 1), on the disease-free glycaemic path."""
    if k == 0:
        st.g_ewma, st.b_ewma = b.g_pre.copy(), b.bmi.copy()
    else:
        st.g_ewma = 0.6 * st.g_ewma + 0.4 * b.g_pre
        st.b_ewma = 0.8 * st.b_ewma + 0.2 * b.bmi
    slope = (b.g_pre - g_pre_hist[max(k - 3, 0)]) / 3.0
    st.eta_prev = (
        1.00 * (st.g_ewma - 5.7) / 0.4
        + 0.45 * slope / 0.1
        + 0.30 * (st.b_ewma - 28) / 5
        + 0.12 * (b.age - 50) / 10
        + 0.15 * s.male
        + 0.35 * s.famhx
        + 0.25 * s.eth_risk
        + 0.25 * np.log(b.tg / 105)
        - 0.10 * (b.hdl - 50) / 10
        + 0.08 * (b.sbp - 125) / 15
        + 0.4 * s.pcos
        + 1.0 * s.gdm
        + 0.4 * steroid
        + 0.4 * st.on_antipsych
        + 0.10 * st.on_statin
    )


def record_year(
    mats: dict[str, np.ndarray],
    j: int,
    st: State,
    enrolled: np.ndarray,
    visits: np.ndarray,
    b: Body,
    gt: GlycaemicTests,
    om: OtherMeasurements,
    coded: dict[str, np.ndarray],
    bg: Background,
) -> None:
    """Write output year j: what is observed (NaN where not measured) and the latent glycaemia."""
    seen = visits >= 1
    mats["alive"][j] = st.alive
    mats["enrolled"][j] = enrolled
    mats["insurance"][j] = st.insurance
    mats["visits"][j] = visits
    mats["g_latent"][j] = b.g
    mats["height"][j] = np.where(om.vit_done, om.height_m, np.nan)
    mats["weight"][j] = np.where(om.vit_done, om.weight_m, np.nan)
    mats["sbp"][j] = np.where(om.sbp_done, om.sbp_m, np.nan)
    mats["hba1c"][j] = np.where(gt.a1c_done, gt.a1c_meas, np.nan)
    mats["glucose"][j] = np.where(gt.fpg_done, gt.fpg_meas, np.nan)
    for name, val in (("ldl", om.ldl_m), ("hdl", om.hdl_m), ("tc", om.tc_m), ("tg", om.tg_m)):
        mats[name][j] = np.where(om.lip_done, val, np.nan)
    mats["creatinine"][j] = np.where(om.cr_done, om.cr_m, np.nan)
    mats["rx_statin"][j] = st.on_statin & seen
    mats["rx_antihypertensive"][j] = st.on_ah & seen
    mats["rx_glucocorticoid"][j] = bg.steroid & seen
    mats["rx_antipsychotic"][j] = st.on_antipsych & seen
    mats["rx_metformin"][j] = st.on_met_pre & seen
    mats["metformin_u"][j] = bg.met_u
    mats["insulin_u"][j] = bg.ins_u
    for code in DX_ORDER:
        mats[f"dx_{code}"][j] = coded[code]
    mats["other_dx"][j] = np.where(bg.other_present, bg.other, -1)


def change_medications(rng: BlockRNG, st: State, b: Body, seen: np.ndarray, om: OtherMeasurements) -> None:
    """Medication starts and stops, effective next year (§1.5); remembers this year's SBP and LDL."""
    statin_start = seen & (
        rng.uniform() < _sigmoid(-4 + 0.04 * (st.ldl_prev - 130) + 0.05 * (b.age - 50) + 1.0 * st.cvd)
    )
    st.on_statin = np.where(st.on_statin, rng.uniform() < 0.9, statin_start)
    sbp_meas_now = np.where(om.sbp_done, om.sbp_m, np.nan)
    ah_start = (sbp_meas_now >= 140) & (rng.uniform() < 0.5)
    st.on_ah = np.where(st.on_ah, rng.uniform() < 0.95, ah_start)
    st.on_antipsych = np.where(st.on_antipsych, rng.uniform() < 0.8, rng.uniform() < 0.002)
    st.on_met_pre = np.where(st.on_met_pre, rng.uniform() < 0.9, st.ever_r73 & (rng.uniform() < 0.03))
    st.sbp_prev = b.sbp
    st.ldl_prev = b.ldl_untreated


def exits(cfg: GenerateConfig, rng: BlockRNG, st: State, enrolled: np.ndarray, age: np.ndarray) -> None:
    """Exits at the end of the year: disenrolment, then death (Gompertz)."""
    st.left |= enrolled & (rng.uniform() < cfg.disenrol_rate)
    st.alive &= ~(rng.uniform() < np.exp(cfg.gompertz_intercept + cfg.gompertz_slope * age))


def recorded_diagnoses(
    cfg: GenerateConfig,
    s: Statics,
    st: State,
    mats: dict[str, np.ndarray],
    coding_u: np.ndarray,
    out_years: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(dx_year, recorded_year, keep, false_code) after the last year: coding misses, washout, false codes."""
    y0 = cfg.first_year
    last_sim = cfg.last_year + cfg.followup_years
    onset = st.onset
    last_alive = y0 + mats["alive"].sum(axis=0) - 1  # alive is a prefix of the years
    last_seen = np.minimum(last_alive, last_sim)
    # t_rec is the clinical diagnosis year (it drives treatment and monitoring); the code lands M years later
    dx_year = np.where((onset >= 0) & (st.t_rec <= last_seen), st.t_rec, -1)
    coded_year = dx_year + coding_miss_years(cfg, dx_year, coding_u)
    rec = np.where((dx_year >= 0) & (coded_year <= last_seen), coded_year, -1)
    first_row = y0 + cfg.burn_in_years
    enrolled_any = mats["enrolled"].any(axis=0)
    # washout on the clinical course, so the cohort does not depend on coding drift
    prevalent = ((onset >= 0) & (onset < first_row)) | ((dx_year >= 0) & (dx_year < first_row))
    keep = enrolled_any & ~prevalent
    false_code = np.zeros(onset.size, dtype=bool)
    if cfg.false_code_rate > 0:
        enr_years = (mats["enrolled"] & (out_years >= first_row)[:, None]).T
        n_enr = enr_years.sum(axis=1)
        false_code = keep & (onset < 0) & (n_enr > 0) & (s.false_u < cfg.false_code_rate)
        pick = np.minimum((s.false_year_u * n_enr).astype(np.int64), np.maximum(n_enr - 1, 0))
        cum = np.cumsum(enr_years, axis=1)
        fy = out_years[np.argmax(cum > pick[:, None], axis=1)]
        rec = np.where(false_code, fy, rec)
    return dx_year, rec, keep, false_code


def simulate_chunk(
    cfg: GenerateConfig,
    seed: int,
    blocks: list[int],
    alpha: float | None,
    *,
    pilot: bool = False,
) -> ChunkResult:
    """Simulate the patients of ``blocks``; ``alpha=None`` switches onset off (calibration pilot)."""
    n_total = cfg.n_patients if not pilot else cfg.calibration_patients
    bs = cfg.block_size
    sizes = [min(bs, n_total - b * bs) for b in blocks]
    if any(s <= 0 for s in sizes):
        raise ValueError(f"blocks {blocks}: beyond n_patients={n_total}")
    rng = BlockRNG([block_seed(seed, b, pilot) for b in blocks], sizes)
    coding_u = BlockRNG([coding_seed(seed, b, pilot) for b in blocks], sizes).uniform()
    pid = np.concatenate(
        [np.arange(b * bs, b * bs + s, dtype=np.int64) for b, s in zip(blocks, sizes, strict=True)]
    )
    n = int(pid.size)
    y0, e_year = cfg.first_year, cfg.last_year
    sim_years = np.arange(y0 - WARMUP_YEARS, e_year + cfg.followup_years + 1)
    out_years = np.arange(y0, e_year + cfg.followup_years + 1)

    statics = draw_statics(cfg, rng, n)
    st = initial_state(rng, statics, n)
    mats = allocate_outputs(out_years.size, n)
    eta0 = np.zeros((out_years.size, n), dtype=np.float64)
    onset_u = np.zeros((out_years.size, n), dtype=np.float64)
    g_pre_hist = np.zeros((sim_years.size, n), dtype=np.float64)
    zipf_w = 1.0 / np.arange(1, 1501, dtype=np.float64) ** ZIPF_EXPONENT
    zipf_cdf = np.cumsum(zipf_w / zipf_w.sum())
    zipf_cdf[-1] = 1.0 + 1e-12

    for k, t in enumerate(sim_years.tolist()):
        rng.refill(YEAR_UNIFORMS, YEAR_NORMALS)
        j = k - WARMUP_YEARS  # output column (negative during warm-up)
        calendar = max(int(t) - y0, 0)
        enrolled = st.alive & (t >= statics.entry) & ~st.left & (t <= e_year)
        update_insurance(rng, st, t - statics.birth_year)
        u_on = rng.uniform()
        if j >= 0:
            eta0[j] = st.eta_prev
            onset_u[j] = u_on
            if alpha is not None:
                fire_onsets(cfg, statics, st, t, alpha, u_on)
        step_residuals(rng, st)
        body = physiology(cfg, statics, st, t, calendar)
        g_pre_hist[k] = body.g_pre
        conditions = true_conditions(rng, statics, st, body)
        visits = utilisation(rng, st, body, conditions)
        seen = visits >= 1
        tests = glycaemic_tests(cfg, rng, statics, st, body, visits, conditions.obese, calendar)
        if cfg.delay_mode == "mechanistic":
            mechanistic_diagnosis(rng, st, body, tests, t)
        measured = other_measurements(rng, statics, body, visits, conditions.htn)
        coding_mult = float(coding_multiplier(cfg, int(t)))
        coded = code_diagnoses(rng, statics, st, conditions, tests, seen, coding_mult)
        background = background_draws(rng, st, seen, zipf_cdf)
        update_hazard_inputs(statics, st, body, background.steroid, g_pre_hist, k)
        if j >= 0:
            record_year(mats, j, st, enrolled, visits, body, tests, measured, coded, background)
        change_medications(rng, st, body, seen, measured)
        exits(cfg, rng, st, enrolled, body.age)

    rng.end_pools()
    mats["hazard"][:] = (
        -np.expm1(-np.exp(alpha + eta0)) if alpha is not None else np.zeros_like(eta0)
    ).astype(np.float32)
    dx_year, rec, keep, false_code = recorded_diagnoses(cfg, statics, st, mats, coding_u, out_years)
    return ChunkResult(
        years=out_years,
        patient_id=pid,
        statics={
            "male": statics.male,
            "birth_year": statics.birth_year,
            "region": statics.region,
            "site_id": statics.site_id,
            "ethnicity": statics.ethnicity,
            "entry_year": statics.entry,
            "family_history": statics.famhx_rec,
        },
        mats=mats,
        onset_year=st.onset,
        recorded_year=rec,
        dx_year=dx_year,
        delay=st.delay,
        false_code=false_code,
        keep=keep,
        eta0=eta0,
        onset_u=onset_u,
        block_sizes=sizes,
        rng=rng,
    )
