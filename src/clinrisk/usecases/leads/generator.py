"""Synthetic B2B SaaS lead-conversion data with a known weekly conversion hazard (numpy, vectorised).

Each company signs up in a random week, then emits one usage row per active week. Activity week ``k`` covers
``[start + 7k, start + 7k + 7)`` and its row is stamped at the week's *end*, ``WHEN_TIMESTAMP = start +
7(k + 1)``: a row is only known once its week is over. The conversion hazard ``h[i, t]`` (probability of
converting during day ``(W_t, W_t + 7]`` with ``W_t = start + 7t``, given not converted before) is a logistic
function of

- firmographics: employee range, industry, web reach (log10 ALEXA_RANK);
- usage: an exponentially weighted average of ``log1p(weekly actions)`` over rows stamped *before* ``W_t``
  (weeks ``<= t - 2``), and whether the deals product was used recently;
- seasonality: a boost in the last month of each quarter and a summer dip.

A converting company's CLOSEDATE is ``W_t + d`` days with ``d`` uniform on 1..7. After conversion its usage
rises (``post_conversion_usage_boost``): features that read usage at or after CLOSEDATE would look
predictive, so the point-in-time tests can see a leak. The hazard is written beside the CSVs
(``truth/weekly_hazard.parquet``); :func:`clinrisk.usecases.leads.truth.snapshot_truth` turns it into the true
probability of converting within the label horizon of any snapshot on the weekly grid.

Same config and seed give the same bytes (one ``numpy.random.Generator`` stream, consumed in a fixed order).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

from clinrisk.io import atomic_output_dir, write_json
from clinrisk.usecases.leads.config import LeadsGenerateConfig
from clinrisk.usecases.leads.tables import (
    CUSTOMERS_FILE,
    EMPLOYEE_RANGES,
    HAZARD_FILE,
    NONCUSTOMERS_FILE,
    USAGE_COLUMNS,
    USAGE_FILE,
)

__all__ = ["INDUSTRIES", "LeadsData", "generate_to_dir", "simulate", "write_csvs"]

FloatArray = npt.NDArray[np.float64]

# (industry, share, log-odds effect on the conversion hazard)
INDUSTRIES: tuple[tuple[str, float, float], ...] = (
    ("Software", 0.16, 0.45),
    ("Marketing/Advertising", 0.14, 0.35),
    ("Internet", 0.10, 0.25),
    ("Information Technology and Services", 0.10, 0.2),
    ("Financial Services", 0.07, 0.0),
    ("Real Estate", 0.07, -0.1),
    ("Health, Wellness and Fitness", 0.06, -0.15),
    ("Education", 0.06, -0.35),
    ("Retail", 0.06, -0.05),
    ("Management Consulting", 0.06, 0.1),
    ("Non-Profit Organization Management", 0.05, -0.5),
    ("Construction", 0.04, -0.25),
    ("Hospitality", 0.03, -0.3),
)
# share of each EMPLOYEE_RANGES level, and its log-odds effect (mid-size firms convert most)
EMPLOYEE_SHARES = (0.12, 0.22, 0.17, 0.16, 0.12, 0.12, 0.05, 0.03, 0.01)
EMPLOYEE_EFFECTS = (-0.6, -0.3, -0.05, 0.15, 0.3, 0.4, 0.3, 0.1, -0.2)
# usage columns per product: (mean users of an average company, actions per user per week)
PRODUCTS: tuple[tuple[str, float, float], ...] = (
    ("CRM_CONTACTS", 1.8, 14.0),
    ("CRM_COMPANIES", 1.1, 6.0),
    ("CRM_DEALS", 0.9, 4.0),
    ("EMAIL", 1.4, 9.0),
)
NULL_SHARE = {"ALEXA_RANK": 0.05, "EMPLOYEE_RANGE": 0.02, "INDUSTRY": 0.03}


@dataclass(frozen=True)
class LeadsData:
    """The three tables with their contract dtypes, plus the truth (weekly hazard) for evaluation."""

    customers: pl.DataFrame
    noncustomers: pl.DataFrame
    usage: pl.DataFrame
    hazard: pl.DataFrame  # ID, WEEK_START (Datetime), HAZARD: P(convert in (WEEK_START, +7 d] | not before)


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


def _season(week_starts: list[dt.date], strength: float) -> FloatArray:
    """Log-odds seasonality of each hazard week: quarter-end month boost, July/August dip."""
    months = np.array([(d + dt.timedelta(days=4)).month for d in week_starts])  # month of the week's middle
    return np.where(months % 3 == 0, strength, 0.0) - np.where(np.isin(months, (7, 8)), 0.5 * strength, 0.0)


def simulate(
    cfg: LeadsGenerateConfig, seed: int, *, shard: int = 0, n_companies: int | None = None, first_id: int = 1
) -> LeadsData:
    """Simulate companies, weekly usage, conversions and the hazard (pure: frames out, no I/O).

    A shard is ``n_companies`` companies (default ``cfg.n_companies``) with IDs ``first_id, first_id + 1, ...``
    and its own random stream ``(seed, shard)``, so shards are independent and any one can be regenerated.
    """
    rng = np.random.default_rng([seed, shard])
    n, T = (cfg.n_companies if n_companies is None else n_companies), cfg.n_weeks
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    size = rng.choice(len(EMPLOYEE_RANGES), size=n, p=EMPLOYEE_SHARES)
    ind_share = np.array([s for _, s, _ in INDUSTRIES])
    industry = rng.choice(len(INDUSTRIES), size=n, p=ind_share / ind_share.sum())
    log_alexa = np.clip(rng.normal(6.4 - 0.22 * size, 0.6), 2.0, 7.2)
    signup = rng.integers(0, cfg.signup_weeks, size=n)
    deals_adopter = rng.random(n) < 0.4

    # latent engagement: company level + AR(1) wander - slow fading with tenure
    level = rng.normal(0.0, 0.8, n) + 0.08 * size
    fade = rng.uniform(0.0, 0.03, n)
    shocks = rng.normal(0.0, 0.5, (n, T))
    wander = np.empty((n, T))
    wander[:, 0] = shocks[:, 0]
    for t in range(1, T):
        wander[:, t] = 0.8 * wander[:, t - 1] + shocks[:, t]
    weeks = np.arange(T)
    tenure = weeks[None, :] - signup[:, None]
    alive = tenure >= 0
    eng = level[:, None] + wander - fade[:, None] * np.maximum(tenure, 0)
    active = alive & (rng.random((n, T)) < _sigmoid(0.3 + 1.2 * eng))

    # usage of the free tier (no conversion effect yet)
    users: dict[str, npt.NDArray[np.int64]] = {}
    actions: dict[str, npt.NDArray[np.int64]] = {}
    size_mult = np.exp(0.3 * (size - 3))
    lam_cache = np.exp(0.5 * eng) * size_mult[:, None]
    for prod, mean_users, per_user in PRODUCTS:
        lam = mean_users * lam_cache
        if prod == "CRM_DEALS":
            lam = lam * np.where(deals_adopter, 1.0, 0.05)[:, None]
        u = rng.poisson(lam) * active
        users[prod] = u
        actions[prod] = rng.poisson(u * per_user * np.exp(0.3 * eng)) * active
    total = np.sum(list(actions.values()), axis=0)

    # hazard of week t reads rows stamped before W_t, i.e. activity weeks <= t - 2
    week_starts = [cfg.start_date + dt.timedelta(days=7 * t) for t in range(T)]
    recent = np.zeros((n, T))
    deals_recent = np.zeros((n, T))
    lt = np.log1p(total.astype(np.float64))
    for t in range(2, T):
        recent[:, t] = 0.6 * recent[:, t - 1] + 0.4 * lt[:, t - 2]
        deals_recent[:, t] = 0.7 * deals_recent[:, t - 1] + 0.3 * (users["CRM_DEALS"][:, t - 2] > 0)
    ind_eff = np.array([e for _, _, e in INDUSTRIES])[industry]
    firmo = np.asarray(EMPLOYEE_EFFECTS)[size] + ind_eff + 0.35 * (5.5 - log_alexa)
    logit_h = (
        np.log(cfg.base_weekly_hazard / (1 - cfg.base_weekly_hazard))
        + firmo[:, None]
        + cfg.usage_effect * (recent - 3.0)
        + 0.8 * deals_recent
        + _season(week_starts, cfg.seasonality)[None, :]
    )
    hazard = np.where(tenure >= 2, _sigmoid(logit_h), 0.0)

    # conversion: the first week whose uniform draw falls under its hazard
    hit = rng.random((n, T)) < hazard
    converted = hit.any(axis=1)
    conv_week = np.where(converted, hit.argmax(axis=1), T)
    conv_day = rng.integers(1, 8, size=n)

    # paying customers use more from the week after conversion on (rendered usage only; hazard unchanged)
    after = weeks[None, :] > conv_week[:, None]
    boost = np.where(after, cfg.post_conversion_usage_boost, 1.0)
    active_after = alive & after & (rng.random((n, T)) < 0.95)
    active = np.where(after, active_after, active)
    for prod, _, per_user in PRODUCTS:
        extra_u = rng.poisson(np.where(after, users[prod] * (boost - 1.0) + 1.0, 0.0))
        users[prod] = (users[prod] + extra_u) * active
        extra_a = rng.poisson(np.where(after, users[prod] * per_user * (boost - 1.0), 0.0))
        actions[prod] = (actions[prod] + extra_a) * active

    mrr = np.round(np.exp(rng.normal(np.log(45.0) + 0.35 * size, 0.6)), 2)
    nulls = {c: rng.random(n) < s for c, s in NULL_SHARE.items()}
    start = np.datetime64(cfg.start_date, "D")

    alexa = pl.Series("ALEXA_RANK", np.round(10.0**log_alexa).astype(np.int64)).set(
        pl.Series(nulls["ALEXA_RANK"]), None
    )
    firmographics = pl.DataFrame(
        {
            "ID": ids,
            "ALEXA_RANK": alexa,
            "EMPLOYEE_RANGE": pl.Series([EMPLOYEE_RANGES[i] for i in size], dtype=pl.String).set(
                pl.Series(nulls["EMPLOYEE_RANGE"]), None
            ),
            "INDUSTRY": pl.Series([INDUSTRIES[i][0] for i in industry], dtype=pl.String).set(
                pl.Series(nulls["INDUSTRY"]), None
            ),
        }
    )
    close = start + (7 * conv_week + conv_day).astype("timedelta64[D]")
    customers = (
        firmographics.filter(pl.Series(converted))
        .with_columns(
            pl.Series("CLOSEDATE", close[converted]).cast(pl.Datetime("us")),
            pl.Series("MRR", mrr[converted]),
        )
        .select("ID", "CLOSEDATE", "MRR", "ALEXA_RANK", "EMPLOYEE_RANGE", "INDUSTRY")
    )
    noncustomers = firmographics.filter(~pl.Series(converted))

    ci, wi = np.nonzero(active)  # row-major: by company, then week
    usage = pl.DataFrame(
        {
            "ID": ids[ci],
            "WHEN_TIMESTAMP": pl.Series(start + (7 * (wi + 1)).astype("timedelta64[D]")).cast(
                pl.Datetime("us")
            ),
            **{f"ACTIONS_{p}": actions[p][ci, wi].astype(np.int64) for p, _, _ in PRODUCTS},
            **{f"USERS_{p}": users[p][ci, wi].astype(np.int64) for p, _, _ in PRODUCTS},
        }
    ).select("ID", "WHEN_TIMESTAMP", *USAGE_COLUMNS)

    hi, hw = np.nonzero(hazard > 0)
    hazard_df = pl.DataFrame(
        {
            "ID": ids[hi],
            "WEEK_START": pl.Series(start + (7 * hw).astype("timedelta64[D]")).cast(pl.Datetime("us")),
            "HAZARD": hazard[hi, hw],
        }
    )
    return LeadsData(customers, noncustomers, usage, hazard_df)


def write_csvs(data: LeadsData, out: Path) -> dict[str, int]:
    """Write the three CSV files in the export's text format (dates ``YYYY-MM-DD``, timestamps with time)."""
    data.customers.with_columns(pl.col("CLOSEDATE").dt.strftime("%Y-%m-%d")).write_csv(out / CUSTOMERS_FILE)
    data.noncustomers.write_csv(out / NONCUSTOMERS_FILE)
    data.usage.with_columns(pl.col("WHEN_TIMESTAMP").dt.strftime("%Y-%m-%d %H:%M:%S")).write_csv(
        out / USAGE_FILE
    )
    return {
        CUSTOMERS_FILE: data.customers.height,
        NONCUSTOMERS_FILE: data.noncustomers.height,
        USAGE_FILE: data.usage.height,
    }


def generate_to_dir(cfg: LeadsGenerateConfig, seed: int, out: Path) -> dict[str, object]:
    """Simulate and publish ``out/{customers,noncustomers,usage_actions}.csv`` + ``out/truth/`` atomically."""
    data = simulate(cfg, seed)
    with atomic_output_dir(Path(out)) as tmp:
        rows = write_csvs(data, tmp)
        (tmp / "truth").mkdir()
        data.hazard.write_parquet(tmp / HAZARD_FILE, statistics=False)
        manifest: dict[str, object] = {
            "seed": seed,
            "config": cfg.model_dump(mode="json"),
            "rows": rows,
            "data_end": (cfg.start_date + dt.timedelta(days=7 * cfg.n_weeks)).isoformat(),
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest
