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
    last_sim = e_year + cfg.followup_years
    sim_years = np.arange(y0 - WARMUP_YEARS, last_sim + 1)
    out_years = np.arange(y0, last_sim + 1)
    n_out = out_years.size
    drift = cfg.secular_drift

    # ---- static attributes (§1.2) --------------------------------------------------------------
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
    eth_risk = np.isin(ethnicity, [ETH_BLACK, ETH_HISPANIC, ETH_ASIAN])
    black = ethnicity == ETH_BLACK

    # AR(1) residuals start from their stationary distributions (AR(ρ,σ): e_t = ρe_{t-1} + N(0,σ²)).
    e_bmi = rng.normal() * 0.65 / np.sqrt(1 - 0.85**2)
    e_g = rng.normal() * 0.07 / np.sqrt(1 - 0.8**2)
    e_sbp = rng.normal() * 9.0 / np.sqrt(1 - 0.6**2)
    # LDL: AR 0.7 with marginal SD 32 (memo); HDL/TG: memo gives marginal SDs, persistence is ours.
    e_ldl = rng.normal() * 32.0
    e_hdl = rng.normal() * 9.0
    e_tg = rng.normal() * 0.35

    # ---- outputs (patient × output year) --------------------------------------------------------
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
    eta0 = np.zeros((n_out, n), dtype=np.float64)
    onset_u = np.zeros((n_out, n), dtype=np.float64)
    g_pre_hist = np.zeros((sim_years.size, n), dtype=np.float64)

    # ---- dynamic state ---------------------------------------------------------------------------
    alive = np.ones(n, dtype=bool)
    left = np.zeros(n, dtype=bool)
    onset = np.full(n, -1, dtype=np.int64)
    t_rec = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    delay = np.zeros(n, dtype=np.int64)
    pending_confirm = np.zeros(n, dtype=bool)
    on_statin = np.zeros(n, dtype=bool)
    on_ah = np.zeros(n, dtype=bool)
    on_antipsych = np.zeros(n, dtype=bool)
    on_met_pre = np.zeros(n, dtype=bool)
    ever_r73 = np.zeros(n, dtype=bool)
    prior_high = np.zeros(n, dtype=bool)
    cvd = np.zeros(n, dtype=bool)
    sbp_prev = np.zeros(n)
    sbp150_years = np.zeros(n)
    ldl_prev = np.full(n, 120.0)
    g_ewma = np.zeros(n)
    b_ewma = np.zeros(n)
    eta_prev = np.full(n, -np.inf)
    zipf_w = 1.0 / np.arange(1, 1501, dtype=np.float64) ** ZIPF_EXPONENT
    zipf_cdf = np.cumsum(zipf_w / zipf_w.sum())
    zipf_cdf[-1] = 1.0 + 1e-12
    pmf_shift = cfg.uninsured_delay_shift_prob
    mechanistic = cfg.delay_mode == "mechanistic"

    for k, t in enumerate(sim_years.tolist()):
        rng.refill(YEAR_UNIFORMS, YEAR_NORMALS)
        j = k - WARMUP_YEARS  # output column (negative during warm-up)
        age = t - birth_year
        calendar = max(int(t) - y0, 0)
        coding_mult = float(coding_multiplier(cfg, int(t)))
        enrolled = alive & (t >= entry) & ~left & (t <= e_year)

        # insurance: Markov re-draws under 65, Medicare from 65 (the uninsured too)
        switch = rng.uniform() < INSURANCE_SWITCH
        redraw = rng.categorical(INSURANCE_P_UNDER65)
        redraw = np.where(redraw == 2, INS_UNINSURED, redraw)
        insurance = np.where(switch & (insurance != INS_MEDICARE), redraw, insurance)
        insurance = np.where(age >= 65, INS_MEDICARE, insurance)
        uninsured = insurance == INS_UNINSURED

        # onset in year t from the state through t-1 (§1.6)
        u_on = rng.uniform()
        if j >= 0:
            eta0[j] = eta_prev
            onset_u[j] = u_on
            if alpha is not None:
                h = -np.expm1(-np.exp(alpha + eta_prev))
                fire = alive & (onset < 0) & (u_on < h)
                if fire.any():
                    onset[fire] = t
                    if not mechanistic:
                        d = d_base[fire].copy()
                        shift = uninsured[fire] & (d >= 0) & (shift_u[fire] < pmf_shift)
                        d += shift
                        delay[fire] = d
                        t_rec[fire] = t + d

        # AR(1) residuals
        e_bmi = 0.85 * e_bmi + 0.65 * rng.normal()
        e_g = 0.8 * e_g + 0.07 * rng.normal()
        e_sbp = 0.6 * e_sbp + 9.0 * rng.normal()
        e_ldl = 0.7 * e_ldl + 32.0 * np.sqrt(1 - 0.7**2) * rng.normal()
        e_hdl = 0.8 * e_hdl + 9.0 * np.sqrt(1 - 0.8**2) * rng.normal()
        e_tg = 0.7 * e_tg + 0.35 * np.sqrt(1 - 0.7**2) * rng.normal()

        # physiology in canonical units (§1.3)
        bmi = (
            bmi_mu
            + 0.10 * np.maximum(np.minimum(age, 65) - age0, 0)
            - 0.10 * np.maximum(age - 70, 0)
            + (cfg.secular_bmi_per_year * calendar if drift else 0.0)
            + e_bmi
        )
        bmi = np.clip(bmi, 16.0, 60.0)
        g_pre = (
            5.05
            + 0.012 * (age - 40)
            + 0.035 * (bmi - 27)
            + 0.22 * u
            + 0.10 * famhx
            + 0.035 * np.maximum(u, 0) * calendar
            + e_g
        )
        g_pre = np.clip(g_pre, 4.3, 6.4)
        g_pre_hist[k] = g_pre
        has_onset = (onset >= 0) & (t >= onset)
        diagnosed = t >= t_rec
        g = g_pre.copy()
        if has_onset.any():
            post = np.maximum(g_pre, 6.5) + 0.5 + 0.15 * (t - onset)
            post = np.clip(post, 6.5, 14.0) - 0.8 * diagnosed
            g = np.where(has_onset, post, g_pre)
        sbp = np.clip(108 + 0.45 * (age - 30) + 0.7 * (bmi - 27) + 4.0 * male + e_sbp - 10.0 * on_ah, 80, 220)
        tg = np.clip(np.exp(np.log(105) + 0.03 * (bmi - 27) + 0.15 * u + e_tg), 30, 1500)
        hdl = np.clip(56 - 9.0 * male - 0.6 * (bmi - 27) - 3.0 * u + e_hdl, 20, 110)
        ldl_untreated = 112 + 0.3 * (age - 50) + e_ldl
        ldl = np.clip(ldl_untreated * np.where(on_statin, 0.65, 1.0), 30, 300)
        tc = ldl + hdl + tg / 5.0
        sbp150_years += sbp > 150
        creat = creat_base + 0.004 * np.maximum(age - 40, 0)
        creat = np.clip(creat * np.where(sbp150_years > 3, 1.15, 1.0), 0.3, 10.0)

        # true comorbid conditions and CVD incidence
        cvd |= alive & (
            rng.uniform()
            < _sigmoid(-6.2 + 0.065 * (age - 50) + 0.5 * male + 0.015 * (sbp - 125) + 0.008 * (ldl - 120))
        )
        htn = on_ah | ((sbp >= 140) & (sbp_prev >= 140))
        hyperlip = (ldl_untreated >= 160) | (tc >= 240) | on_statin
        obese = bmi >= 30
        nafld = 0.35 * (bmi - 27) + 0.6 * u + z_nafld > 1.8
        osa = 0.3 * (bmi - 30) + 0.6 * male + 0.03 * (age - 50) + z_osa > 1.2
        n_comorb = htn.astype(np.int64) + hyperlip + obese + pcos + gdm + cvd + nafld + osa

        # utilisation: NegBin(mean μ, size 2) as a gamma–Poisson mixture (§1.4)
        undiagnosed = has_onset & ~diagnosed
        log_mu = (
            0.7
            + 0.015 * (age - 50)
            + 0.2 * n_comorb
            + 0.35 * undiagnosed
            + 0.1 * (insurance == INS_MEDICAID)
            - 0.5 * uninsured
            + 0.4 * diagnosed  # diabetes care after the code (design choice)
        )
        lam = rng.gamma(2.0) * np.exp(log_mu) / 2.0
        visits = np.minimum(rng.poisson(lam), 60) * alive
        seen = visits >= 1

        # glycaemic testing: MAR (visits, BMI, age, history, insurance) + MNAR (current g) (§1.4)
        lin = (
            -2.2
            + 0.45 * np.minimum(visits, 6)
            + 0.7 * obese
            + 0.6 * (age >= 45)
            + 1.0 * prior_high
            - 0.6 * uninsured
            + 1.2 * np.maximum(g - 6.0, 0)
            # testing drift centred on mid-calendar, so the average rate stays the memo's
            + (cfg.secular_test_logit_per_year * (calendar - (e_year - y0) / 2) if drift else 0.0)
            + 2.0 * diagnosed  # diabetes monitoring (design choice)
        )
        tested = seen & (rng.uniform() < _sigmoid(lin))
        a1c_done = tested & (rng.uniform() < P_HBA1C_GIVEN_TEST)
        fpg_done = tested & (rng.uniform() < P_FPG_GIVEN_TEST)
        a1c_meas = g + 0.2 * black + 0.15 * rng.normal()
        fpg_true = np.clip(100 + 30 * (g - 5.7) + 8.0 * rng.normal(), 60, 400)
        fpg_meas = fpg_true * (1 + 0.05 * rng.normal())
        a1c_high = a1c_done & (a1c_meas >= 5.7)
        prior_high |= a1c_high

        if mechanistic:
            # test ≥ cut-point, confirmed (same year p=0.6, else next tested year), or symptoms (§1.7b)
            positive = (a1c_done & (a1c_meas >= 6.5)) | (fpg_done & (fpg_meas >= 126))
            at_risk = has_onset & (t_rec == np.iinfo(np.int64).max)
            confirm_now = rng.uniform() < 0.6
            symptomatic = rng.uniform() < -np.expm1(-0.15 * np.maximum(t - onset, 0))
            lag = (rng.uniform() >= 0.9).astype(np.int64)
            dx_now = at_risk & ((pending_confirm & tested) | (positive & confirm_now) | symptomatic)
            pending_confirm = at_risk & ~dx_now & (pending_confirm | positive)
            t_rec = np.where(dx_now, t + lag, t_rec)
            delay = np.where(dx_now, t + lag - onset, delay)

        lip_done = seen & (rng.uniform() < _sigmoid(-1.2 + 0.3 * np.minimum(visits, 6) + 0.5 * (age >= 45)))
        cr_done = seen & (
            rng.uniform() < _sigmoid(-0.8 + 0.3 * np.minimum(visits, 6) + 0.5 * (age >= 45) + 0.5 * htn)
        )
        tc_m = tc * (1 + 0.06 * rng.normal())
        hdl_m = hdl * (1 + 0.06 * rng.normal())
        tg_m = tg * (1 + 0.06 * rng.normal())
        ldl_direct = ldl * (1 + 0.06 * rng.normal())
        # the lab reports Friedewald LDL unless TG ≥ 400 mg/dL, then a direct LDL
        ldl_m = np.where(tg_m < 400, np.maximum(tc_m - hdl_m - tg_m / 5.0, 5.0), ldl_direct)
        cr_m = creat * (1 + 0.04 * rng.normal())
        vit_done = seen & (rng.uniform() < P_VITALS)
        sbp_done = seen & (rng.uniform() < P_VITALS)
        height_m = height + 0.5 * rng.normal()
        bmi_m = bmi + 0.5 * rng.normal()
        weight_m = bmi_m * (height / 100.0) ** 2
        sbp_m = sbp + 6.0 * rng.normal()

        # codes recorded at visits, with under-coding (§1.5)
        r73_lab = (a1c_done & (a1c_meas >= 5.7) & (a1c_meas < 6.5)) | (
            fpg_done & (fpg_meas >= 100) & (fpg_meas < 126)
        )
        conds = {
            "I10": htn,
            "E78": hyperlip,
            "E66": obese,
            "R73": r73_lab,
            "E28_2": pcos,
            "O24_4": gdm,
            "I25": cvd,
            "K76_0": nafld,
            "G47_33": osa,
        }
        coded = {}
        for code in DX_ORDER:
            coded[code] = seen & conds[code] & (rng.uniform() < min(SENS[code] * coding_mult, 1.0))
        coded["R73"] |= seen & ever_r73 & (rng.uniform() < 0.5)  # stays on the problem list
        ever_r73 |= coded["R73"]
        other = np.searchsorted(zipf_cdf, rng.uniform(), side="right")
        other_present = seen & (rng.uniform() < P_OTHER_DX)
        steroid = alive & (rng.uniform() < 0.03)
        met_u = rng.uniform()
        ins_u = rng.uniform()

        # hazard inputs through year t (for onset in t+1), from the disease-free glycaemic path
        if k == 0:
            g_ewma, b_ewma = g_pre.copy(), bmi.copy()
        else:
            g_ewma = 0.6 * g_ewma + 0.4 * g_pre
            b_ewma = 0.8 * b_ewma + 0.2 * bmi
        slope = (g_pre - g_pre_hist[max(k - 3, 0)]) / 3.0
        eta_prev = (
            1.00 * (g_ewma - 5.7) / 0.4
            + 0.45 * slope / 0.1
            + 0.30 * (b_ewma - 28) / 5
            + 0.12 * (age - 50) / 10
            + 0.15 * male
            + 0.35 * famhx
            + 0.25 * eth_risk
            + 0.25 * np.log(tg / 105)
            - 0.10 * (hdl - 50) / 10
            + 0.08 * (sbp - 125) / 15
            + 0.4 * pcos
            + 1.0 * gdm
            + 0.4 * steroid
            + 0.4 * on_antipsych
            + 0.10 * on_statin
        )

        if j >= 0:
            mats["alive"][j] = alive
            mats["enrolled"][j] = enrolled
            mats["insurance"][j] = insurance
            mats["visits"][j] = visits
            mats["g_latent"][j] = g
            mats["height"][j] = np.where(vit_done, height_m, np.nan)
            mats["weight"][j] = np.where(vit_done, weight_m, np.nan)
            mats["sbp"][j] = np.where(sbp_done, sbp_m, np.nan)
            mats["hba1c"][j] = np.where(a1c_done, a1c_meas, np.nan)
            mats["glucose"][j] = np.where(fpg_done, fpg_meas, np.nan)
            for name, val in (("ldl", ldl_m), ("hdl", hdl_m), ("tc", tc_m), ("tg", tg_m)):
                mats[name][j] = np.where(lip_done, val, np.nan)
            mats["creatinine"][j] = np.where(cr_done, cr_m, np.nan)
            mats["rx_statin"][j] = on_statin & seen
            mats["rx_antihypertensive"][j] = on_ah & seen
            mats["rx_glucocorticoid"][j] = steroid & seen
            mats["rx_antipsychotic"][j] = on_antipsych & seen
            mats["rx_metformin"][j] = on_met_pre & seen
            mats["metformin_u"][j] = met_u
            mats["insulin_u"][j] = ins_u
            for code in DX_ORDER:
                mats[f"dx_{code}"][j] = coded[code]
            mats["other_dx"][j] = np.where(other_present, other, -1)

        # medication changes take effect next year (§1.5)
        statin_start = seen & (
            rng.uniform() < _sigmoid(-4 + 0.04 * (ldl_prev - 130) + 0.05 * (age - 50) + 1.0 * cvd)
        )
        on_statin = np.where(on_statin, rng.uniform() < 0.9, statin_start)
        sbp_meas_now = np.where(sbp_done, sbp_m, np.nan)
        ah_start = (sbp_meas_now >= 140) & (rng.uniform() < 0.5)
        on_ah = np.where(on_ah, rng.uniform() < 0.95, ah_start)
        on_antipsych = np.where(on_antipsych, rng.uniform() < 0.8, rng.uniform() < 0.002)
        on_met_pre = np.where(on_met_pre, rng.uniform() < 0.9, ever_r73 & (rng.uniform() < 0.03))
        sbp_prev = sbp
        ldl_prev = ldl_untreated

        # exits at the end of the year: disenrolment, then death (Gompertz)
        left |= enrolled & (rng.uniform() < cfg.disenrol_rate)
        alive &= ~(rng.uniform() < np.exp(cfg.gompertz_intercept + cfg.gompertz_slope * age))

    rng.end_pools()
    mats["hazard"][:] = (
        -np.expm1(-np.exp(alpha + eta0)) if alpha is not None else np.zeros_like(eta0)
    ).astype(np.float32)

    # ---- post-processing: recorded year, washout, false codes ------------------------------------
    last_alive = y0 + mats["alive"].sum(axis=0) - 1  # alive is a prefix of the years
    last_seen = np.minimum(last_alive, last_sim)
    # t_rec is the clinical diagnosis year (it drives treatment and monitoring); the code lands M years later
    dx_year = np.where((onset >= 0) & (t_rec <= last_seen), t_rec, -1)
    coded_year = dx_year + coding_miss_years(cfg, dx_year, coding_u)
    rec = np.where((dx_year >= 0) & (coded_year <= last_seen), coded_year, -1)
    first_row = y0 + cfg.burn_in_years
    enrolled_any = mats["enrolled"].any(axis=0)
    # washout on the clinical course, so the cohort does not depend on coding drift
    prevalent = ((onset >= 0) & (onset < first_row)) | ((dx_year >= 0) & (dx_year < first_row))
    keep = enrolled_any & ~prevalent
    false_code = np.zeros(n, dtype=bool)
    if cfg.false_code_rate > 0:
        enr_years = (mats["enrolled"] & (out_years >= first_row)[:, None]).T
        n_enr = enr_years.sum(axis=1)
        false_code = keep & (onset < 0) & (n_enr > 0) & (false_u < cfg.false_code_rate)
        pick = np.minimum((false_year_u * n_enr).astype(np.int64), np.maximum(n_enr - 1, 0))
        cum = np.cumsum(enr_years, axis=1)
        fy = out_years[np.argmax(cum > pick[:, None], axis=1)]
        rec = np.where(false_code, fy, rec)
    statics = {
        "male": male,
        "birth_year": birth_year,
        "region": region,
        "site_id": site_id,
        "ethnicity": ethnicity,
        "entry_year": entry,
        "family_history": famhx_rec,
    }
    return ChunkResult(
        years=out_years,
        patient_id=pid,
        statics=statics,
        mats=mats,
        onset_year=onset,
        recorded_year=rec,
        dx_year=dx_year,
        delay=delay,
        false_code=false_code,
        keep=keep,
        eta0=eta0,
        onset_u=onset_u,
        block_sizes=sizes,
        rng=rng,
    )
