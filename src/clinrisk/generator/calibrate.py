"""Calibrate the onset intercept α by bisection on a deterministic pilot sample (docs/science.md §1.6)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clinrisk.config import GenerateConfig
from clinrisk.errors import ConfigError
from clinrisk.generator.simulate import simulate_chunk

ALPHA_LO, ALPHA_HI = -15.0, 5.0


@dataclass(frozen=True)
class PilotPaths:
    """What the metric needs: α-free linear predictors, onset uniforms, alive/enrolled masks."""

    eta0: np.ndarray
    onset_u: np.ndarray
    alive: np.ndarray
    enrolled: np.ndarray


def simulate_pilot(cfg: GenerateConfig, seed: int) -> PilotPaths:
    """Disease-free paths of ``calibration_patients`` pilot patients (own SeedSequence subtree)."""
    n = cfg.calibration_patients
    n_blocks = -(-n // cfg.block_size)
    per_chunk = max(1, cfg.chunk_patients // cfg.block_size)
    parts = []
    for start in range(0, n_blocks, per_chunk):
        res = simulate_chunk(
            cfg, seed, list(range(start, min(start + per_chunk, n_blocks))), None, pilot=True
        )
        # (patient × year) layout for the metric
        parts.append((res.eta0.T, res.onset_u.T, res.mats["alive"].T, res.mats["enrolled"].T))
    return PilotPaths(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


def mean_h_year_risk(cfg: GenerateConfig, pilot: PilotPaths, alpha: float) -> float:
    """Mean H-year risk 1 − Π(1 − h_{t+k}) over eligible pilot rows given α.

    Eligible: enrolled, t ≥ first prediction year, still onset-free at t, full follow-up (t + H ≤ last
    enrolled year), in patients not washed out (no onset in the burn-in). Onsets use the same
    uniforms for every α (common random numbers), so the metric is smooth in α.
    """
    h = -np.expm1(-np.exp(alpha + pilot.eta0))
    fire = (pilot.onset_u < h) & pilot.alive
    n_years = h.shape[1]
    any_fire = fire.any(axis=1)
    onset_j = np.where(any_fire, np.argmax(fire, axis=1), n_years)
    burn = cfg.burn_in_years
    horizon = cfg.calibration_horizon
    n_obs = cfg.last_year - cfg.first_year + 1
    enrolled = pilot.enrolled[:, :n_obs]
    last_enrolled = np.where(enrolled.any(axis=1), n_obs - 1 - np.argmax(enrolled[:, ::-1], axis=1), -1)
    j = np.arange(n_obs)[None, :]
    eligible = (
        enrolled
        & (j >= burn)
        & (j < onset_j[:, None])
        & (j + horizon <= last_enrolled[:, None])
        & (onset_j >= burn)[:, None]
    )
    log_surv = np.log1p(-np.minimum(h, 1 - 1e-12))
    csum = np.concatenate([np.zeros((h.shape[0], 1)), np.cumsum(log_surv, axis=1)], axis=1)
    # Σ_{k=1..H} log(1 − h_{t+k}) = csum[t+H+1] − csum[t+1]
    idx_hi = np.minimum(np.arange(n_obs) + horizon + 1, n_years)
    risk = -np.expm1(csum[:, idx_hi] - csum[:, np.arange(n_obs) + 1])
    n_elig = int(eligible.sum())
    if n_elig == 0:
        return float("nan")
    return float(risk[eligible].mean())


def calibrate_alpha(cfg: GenerateConfig, seed: int) -> dict[str, float]:
    """Bisection for α so the pilot's mean H-year risk equals ``target_prevalence``."""
    pilot = simulate_pilot(cfg, seed)
    target = cfg.target_prevalence
    lo, hi = ALPHA_LO, ALPHA_HI
    f_lo, f_hi = mean_h_year_risk(cfg, pilot, lo), mean_h_year_risk(cfg, pilot, hi)
    # NaN at the top: every pilot patient has onset in the burn-in, i.e. far above the target
    if not (f_lo < target and (np.isnan(f_hi) or f_hi > target)):
        raise ConfigError(
            f"generate.target_prevalence: {target} not reachable for α in [{lo}, {hi}] "
            f"(pilot risk {f_lo:.4f}..{f_hi:.4f})"
        )
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mean_h_year_risk(cfg, pilot, mid) < target:  # NaN compares False → too high
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-6:
            break
    alpha = round(0.5 * (lo + hi), 6)
    return {"alpha": alpha, "pilot_mean_risk": mean_h_year_risk(cfg, pilot, alpha)}
