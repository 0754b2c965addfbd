"""Patient-disjoint, forward-in-time splits with a label embargo (docs/science.md §4.4).

The patient bucket is ``SplitMix64(patient_id) mod 100``: a fixed, version-independent integer hash
(not Python's salted ``hash()``, not ``pl.Expr.hash`` which is stable only within one Polars version).
It is written twice, as polars UInt64 expressions (wrapping arithmetic, lazy and streaming-friendly) and
in numpy; the tests pin both to known SplitMix64 outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from clinrisk.config import SplitConfig
from clinrisk.errors import ConfigError

SPLIT_LEVELS = ["train", "validation", "test", "embargo", "unused"]
SPLIT_DTYPE = pl.Enum(SPLIT_LEVELS)
N_BUCKETS = 100

_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def splitmix64_np(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of ``x + gamma`` (uint64, wrapping), i.e. the first output of a SplitMix64
    generator seeded with ``x``."""
    z = np.asarray(x).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z = z + np.uint64(_GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
        z = z ^ (z >> np.uint64(31))
    return z


def splitmix64_expr(e: pl.Expr) -> pl.Expr:
    """Same as :func:`splitmix64_np` as a polars expression on a UInt64 input (wrapping arithmetic)."""
    g, m1, m2 = (pl.lit(v, dtype=pl.UInt64) for v in (_GAMMA, _M1, _M2))
    z = e + g
    z = (z.xor(z // pl.lit(1 << 30, dtype=pl.UInt64))) * m1
    z = (z.xor(z // pl.lit(1 << 27, dtype=pl.UInt64))) * m2
    return z.xor(z // pl.lit(1 << 31, dtype=pl.UInt64))


def patient_bucket_expr(col: str = "patient_id") -> pl.Expr:
    """Hash bucket 0..99 of an Int64 patient id (reinterpreted as unsigned, so negatives work)."""
    u = pl.col(col).cast(pl.Int64).reinterpret(signed=False)
    return (splitmix64_expr(u) % N_BUCKETS).cast(pl.UInt8)


def patient_bucket_np(patient_ids: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`patient_bucket_expr`."""
    u = np.asarray(patient_ids, dtype=np.int64).view(np.uint64)
    return (splitmix64_np(u) % np.uint64(N_BUCKETS)).astype(np.uint8)


def check_embargo(cfg: SplitConfig, horizon_years: int) -> None:
    """Training and validation labels must be observable before the test period starts."""
    if not cfg.temporal:
        return
    cutoff = cfg.test_years[0] - 1
    for name in ("train_years", "validation_years"):
        hi = getattr(cfg, name)[1]
        if hi + horizon_years > cutoff:
            raise ConfigError(
                f"split.{name}: last year {hi} + horizon {horizon_years} > {cutoff} "
                f"(the year before split.test_years starts): labels would leak from the test period"
            )
    if cfg.train_years[1] >= cfg.validation_years[0]:
        raise ConfigError("split.train_years: must end before split.validation_years starts")


def _in(e: pl.Expr, rng: tuple[int, int], *, half_open: bool) -> pl.Expr:
    lo, hi = rng
    return (e >= lo) & ((e < hi) if half_open else (e <= hi))


def label_cutoff(cfg: SplitConfig, last_year: int) -> int:
    """Last calendar year whose data the train and validation labels may use (docs/science.md §4.4).

    Temporal split: the year before the test period (the embargo's ``cutoff``); a diagnosis recorded later
    was not known when the model was built. Patient-only split: ``last_year`` (no time boundary).
    """
    return min(cfg.test_years[0] - 1, last_year) if cfg.temporal else last_year


def label_known_through_expr(cfg: SplitConfig, horizon_years: int, last_year: int) -> pl.Expr:
    """Per row (patient_id, year): the last year its label may see — :func:`label_cutoff` for rows that
    fall in train or validation, ``last_year`` for test and the rest (evaluation sees everything)."""
    fitted = split_expr(cfg, horizon_years).is_in(["train", "validation"])
    return (
        pl.when(fitted).then(pl.lit(label_cutoff(cfg, last_year))).otherwise(pl.lit(last_year)).cast(pl.Int32)
    )


def assign_split(lf: pl.LazyFrame, cfg: SplitConfig, horizon_years: int) -> pl.LazyFrame:
    """Add ``split`` (Enum[train, validation, test, embargo, unused]) to rows with patient_id and year.

    Bucket ranges are half-open [lo, hi); year ranges are inclusive. With ``temporal`` the split also
    needs the row year in the split's years; years between validation and test are ``embargo``; with
    ``test_all_patients`` (default) every row of the test years is ``test``, whatever its bucket.
    """
    return lf.with_columns(split_expr(cfg, horizon_years).alias("split"))


def split_expr(cfg: SplitConfig, horizon_years: int) -> pl.Expr:
    """The ``split`` column of :func:`assign_split` as an expression on patient_id and year."""
    check_embargo(cfg, horizon_years)
    b = patient_bucket_expr()
    y = pl.col("year")
    groups = [
        ("train", cfg.train_buckets, cfg.train_years),
        ("validation", cfg.validation_buckets, cfg.validation_years),
        ("test", cfg.test_buckets, cfg.test_years),
    ]
    expr: Any = pl.when(pl.lit(False)).then(pl.lit(None, dtype=pl.String))
    for name, buckets, years in groups:
        cond = _in(b, buckets, half_open=True)
        if cfg.temporal:
            cond = cond & _in(y, years, half_open=False)
            if name == "test" and cfg.test_all_patients:
                # every post-embargo eligible row: the model never trains on these years, so a training
                # patient's later rows are honest forward-in-time test rows (issue 16: ≈ 5× the test set)
                cond = _in(y, years, half_open=False)
        expr = expr.when(cond).then(pl.lit(name))
    if cfg.temporal:
        expr = expr.when((y > cfg.validation_years[1]) & (y < cfg.test_years[0])).then(pl.lit("embargo"))
    out: pl.Expr = expr.otherwise(pl.lit("unused")).cast(SPLIT_DTYPE)
    return out
