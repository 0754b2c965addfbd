"""Labels with diagnosis-year uncertainty (docs/science.md §2.2, §2.3, §3.1) and evaluation-only truth columns.

Recorded diagnosis year ``T_rec`` = first year with an observed ``dx_E11``. A prediction row t is eligible
when ``t >= first_prediction_year``, ``t >= entry_year + min_history_years`` and ``t < T_rec``. Its
recorded label is ``1{T_rec <= t+H}``. A negative needs full label follow-up: ``t+H <= E`` (last calendar
year) and the patient still observed through ``t+H`` (last observed year ``L >= t+H``); censored rows are
dropped, never labelled 0.

Strategies (``labels.strategy``):

- E0: hard recorded labels, weight 1.
- E1b: weight 0 for recorded-NEGATIVE rows in the ambiguity buffer ``t in [r-H-d_max, r-H-1]`` of
  recorded cases and in the end-of-follow-up band ``t > L-H-d_max`` of never-recorded patients, with
  ``L`` the last year observed by the row's label cutoff and ``d_max`` the clinical pmf's (the coding lag is
  not added: it leaves soft labels ≤ 0.03 outside, docs/science.md §2.3); recorded positives are never
  dropped. Only training rows are reweighted (``reweight_rows``); validation rows keep weight 1.

Every strategy sees only what was known at the row's label cutoff (``known_through``: the split's cutoff
for train and validation rows), never a diagnosis recorded after it.
- E2: expected (soft) label ``P(T* <= t+H | data)`` under the assumed delay model. At pmf = delta_0 and no
  coding drift it is exactly the E0 label.

The assumed delay model is year-aware (:func:`total_delay_pmf`): the clinical delay pmf describes the last
calendar year E, and under ``labels.assumed_coding_drift_per_year`` = r the code then lands each later year
with probability ``min(1, (1+r)^(year-E))``, as the generator's coding drift does, so earlier onsets wait
longer for their code.

Calibration target (``labels.calibration_target``): on the calibration part of validation
(``calibration_rows``) the ``label`` column is the expected true label under the assumed delay model when
the target is ``expected`` (default), whatever the strategy: the calibration map then estimates
``P(Y_true = 1 | score)``, which recorded labels understate (a recorded-label map learns their bias: E0's
true-label O/E 1.33). The map is monotone, so the ranking is the strategy's own.
"""

from __future__ import annotations

import polars as pl

from clinrisk.config import LabelsConfig
from clinrisk.errors import DataError

LABEL_SCHEMA = {
    "patient_id": pl.Int64,
    "year": pl.Int16,
    "label": pl.Float32,
    "label_rec": pl.Int8,
    "sample_weight": pl.Float32,
}
EVAL_COLUMNS = (
    "eval_label_true",
    "eval_oracle_risk",
    "eval_onset_year",
    "eval_recorded_year",
    "eval_undiagnosed",
)


def delay_support(cfg: LabelsConfig) -> list[tuple[int, float]]:
    """(d, pi(d)) pairs of the assumed delay pmf, d starting at ``delay_support_min``."""
    return [(cfg.delay_support_min + i, float(p)) for i, p in enumerate(cfg.assumed_delay_pmf)]


# Coding misses beyond this many years are folded into the last one: at r = 0.02 a 2005 diagnosis is still
# uncoded after 8 years with probability ≈ 1e-5 (the cap only bounds the soft label's support).
MAX_CODING_MISS_YEARS = 8


def coding_miss_pmf(cfg: LabelsConfig, dx_year: int, last_year: int) -> list[float]:
    """P(M = m), m = 0..MAX_CODING_MISS_YEARS: years the code lags a clinical diagnosis in ``dx_year``.

    Each year y from ``dx_year`` on the code lands with probability ``s(y) = min(1, (1+r)^(y-E))``
    (E = ``last_year``), the generator's coding-drift model (docs/science.md §1.5); r = 0 gives M = 0."""
    r = cfg.assumed_coding_drift_per_year
    out = [0.0] * (MAX_CODING_MISS_YEARS + 1)
    surv = 1.0
    for m in range(MAX_CODING_MISS_YEARS):
        s = min(1.0, (1.0 + r) ** (dx_year + m - last_year)) if r > 0 else 1.0
        out[m] = surv * s
        surv *= 1.0 - s
    out[MAX_CODING_MISS_YEARS] = surv
    return out


def total_delay_pmf(cfg: LabelsConfig, onset_year: int, last_year: int) -> dict[int, float]:
    """P(T_rec - T* = d | T* = onset_year): the clinical delay pmf convolved with the coding lag of the
    diagnosis year (year-aware under coding drift; the clinical pmf itself at r = 0)."""
    out: dict[int, float] = {}
    for d, p in delay_support(cfg):
        if p <= 0:
            continue
        for m, q in enumerate(coding_miss_pmf(cfg, onset_year + d, last_year)):
            if q > 0:
                out[d + m] = out.get(d + m, 0.0) + p * q
    return out


def _by_onset_year(prob: dict[int, float], onset: pl.Expr, lo: int, hi: int) -> pl.Expr:
    """Expression looking up a per-onset-year probability; years outside [lo, hi] take the nearest end."""
    years = list(range(lo, hi + 1))
    return onset.clip(lo, hi).replace_strict(years, [prob[y] for y in years], return_dtype=pl.Float64)


def delay_bounds(cfg: LabelsConfig) -> tuple[int, int]:
    """(d_min, d_max) over delays with positive probability."""
    ds = [d for d, p in delay_support(cfg) if p > 0]
    return min(ds), max(ds)


def patient_events(raw: pl.LazyFrame) -> pl.LazyFrame:
    """Per patient: recorded diagnosis year ``t_rec`` (null if never), last observed year ``last_obs``."""
    names = raw.collect_schema().names()
    missing = [c for c in ("patient_id", "year", "dx_E11", "entry_year") if c not in names]
    if missing:
        raise DataError(f"raw patient-years: missing columns {missing} needed for labels")
    return raw.group_by("patient_id").agg(
        pl.col("year").filter(pl.col("dx_E11").fill_null(False)).min().cast(pl.Int16).alias("t_rec"),
        pl.col("year").max().cast(pl.Int16).alias("last_obs"),
    )


def build_labels(
    raw: pl.LazyFrame,
    cfg: LabelsConfig,
    *,
    first_prediction_year: int,
    last_year: int,
    known_through: pl.Expr | None = None,
    reweight_rows: pl.Expr | None = None,
    calibration_rows: pl.Expr | None = None,
) -> pl.LazyFrame:
    """Eligible prediction rows with ``label``, ``label_rec`` and ``sample_weight`` (see module doc).

    ``known_through`` (an Int32 expression on patient_id and year, default ``last_year``) is the last
    calendar year a row's label may use: a diagnosis recorded after it counts as not recorded and the
    patient's follow-up ends there. Train and validation rows get the split's label cutoff
    (:func:`clinrisk.splits.label_known_through_expr`), so soft labels and the E1b band never see
    diagnoses recorded after the model was built; hard labels of eligible rows are unchanged by it.

    ``reweight_rows`` (a Boolean expression on patient_id and year, default all rows) limits E1b's weight 0
    to those rows; the pipeline passes the training split. Near the label cutoff every never-recorded
    negative lies in the end-of-follow-up band, so zeroing validation rows would leave early stopping and
    the calibration map almost only recorded cases (calibrated risk far too high); validation keeps every
    row at weight 1 and calibrates to the recorded labels.
    """
    h = cfg.horizon_years
    _, d_max = delay_bounds(cfg)
    events = patient_events(raw)
    t = pl.col("year").cast(pl.Int32)
    r = pl.col("t_rec").cast(pl.Int32)
    big_l = pl.col("last_obs").cast(pl.Int32)
    recorded = pl.col("t_rec").is_not_null()
    cut = pl.col("_known_through")

    rows = (
        raw.select(
            pl.col("patient_id").cast(pl.Int64),
            pl.col("year").cast(pl.Int16),
            pl.col("entry_year").cast(pl.Int16),
        )
        .join(events, on="patient_id", how="left")
        .with_columns(
            (reweight_rows if reweight_rows is not None else pl.lit(True)).alias("_reweight"),
            pl.min_horizontal(
                (known_through if known_through is not None else pl.lit(last_year)).cast(pl.Int32),
                pl.lit(last_year, dtype=pl.Int32),
            ).alias("_known_through"),
        )
        # what was known at the row's cutoff: the diagnosis only if recorded by then, follow-up up to it
        .with_columns(
            pl.when(r <= cut).then(pl.col("t_rec")).otherwise(None).cast(pl.Int16).alias("t_rec"),
            pl.min_horizontal(big_l, cut).cast(pl.Int16).alias("last_obs"),
        )
        .filter(
            (t >= first_prediction_year)
            & (t >= pl.col("entry_year").cast(pl.Int32) + cfg.min_history_years)
            & (~recorded | (t < r))
        )
        .with_columns(label_rec=(recorded & (r <= t + h)).cast(pl.Int8))
        .filter((pl.col("label_rec") == 1) | ((t + h <= cut) & (big_l >= t + h)))
    )

    neg = pl.col("label_rec") == 0
    if cfg.strategy == "E0":
        label = pl.col("label_rec").cast(pl.Float32)
        weight = pl.lit(1.0)
    elif cfg.strategy == "E1b":
        buffer = recorded & (t >= r - h - d_max) & (t <= r - h - 1)
        band = ~recorded & (t > big_l - h - d_max)
        label = pl.col("label_rec").cast(pl.Float32)
        weight = pl.when(neg & (buffer | band) & pl.col("_reweight")).then(0.0).otherwise(1.0)
    elif cfg.strategy == "E2":
        label = soft_label_expr(cfg, first_prediction_year=first_prediction_year, last_year=last_year)
        weight = pl.lit(1.0)
    else:  # pragma: no cover - pydantic restricts the literal
        raise DataError(f"labels.strategy: unknown strategy {cfg.strategy!r}")
    if cfg.calibration_target == "expected" and calibration_rows is not None and cfg.strategy != "E2":
        expected = soft_label_expr(cfg, first_prediction_year=first_prediction_year, last_year=last_year)
        label = pl.when(calibration_rows).then(expected).otherwise(label)
    return rows.select(
        "patient_id",
        "year",
        label.cast(pl.Float32).alias("label"),
        pl.col("label_rec"),
        weight.cast(pl.Float32).alias("sample_weight"),
    )


def soft_label_expr(cfg: LabelsConfig, *, first_prediction_year: int, last_year: int) -> pl.Expr:
    """E2 expected label ỹ (docs/science.md §2.2) on rows carrying year, t_rec and last_obs.

    With ``P_s(d)`` the total-delay pmf of onset year s (:func:`total_delay_pmf`, year-aware under coding
    drift, relative to ``labels.assumed_delay_year`` or else ``last_year``). Recorded cases: ``sum_d w_d 1{r-d <= t+H}`` with ``w_d ∝ P_{r-d}(d) 1{r-d >= first_prediction_year}``
    (onsets before the first prediction year were excluded as prevalent; incidence locally flat).
    Never recorded: ``h_bar * sum_{k>=0} P_{L-k}(D > k) 1{L-k <= t+H}``, the onsets in years ``L-k`` up to
    t+H whose code would still be pending at L, the last observed year; P(T_rec > L) ≈ 1 at these
    incidences, so it is not divided out. At r = 0 both are the clinical pmf's formulas of §2.2.
    """
    h = cfg.horizon_years
    t = pl.col("year").cast(pl.Int32)
    r = pl.col("t_rec").cast(pl.Int32)
    big_l = pl.col("last_obs").cast(pl.Int32)
    ref = cfg.assumed_delay_year if cfg.assumed_delay_year is not None else last_year
    lo, hi = first_prediction_year - MAX_CODING_MISS_YEARS - 10, max(last_year, ref) + 1
    pmfs = {y: total_delay_pmf(cfg, y, ref) for y in range(lo, hi + 1)}
    support = sorted({d for pmf in pmfs.values() for d in pmf})
    num: pl.Expr = pl.lit(0.0)
    den: pl.Expr = pl.lit(0.0)
    for d in support:
        p_d = _by_onset_year({y: pmf.get(d, 0.0) for y, pmf in pmfs.items()}, r - d, lo, hi)
        adm = (r - d >= first_prediction_year).cast(pl.Float64) * p_d
        den = den + adm
        num = num + adm * (r - d <= t + h).cast(pl.Float64)
    recorded_soft = pl.when(den > 0).then(num / den).otherwise((r <= t + h).cast(pl.Float64))
    never: pl.Expr = pl.lit(0.0)
    for k in range(max(support)):
        tail = {y: sum(p for d, p in pmf.items() if d > k) for y, pmf in pmfs.items()}
        never = never + _by_onset_year(tail, big_l - k, lo, hi) * (big_l - k <= t + h).cast(pl.Float64)
    never_soft = (never * cfg.assumed_annual_incidence).clip(0.0, 1.0)
    return pl.when(pl.col("t_rec").is_not_null()).then(recorded_soft).otherwise(never_soft)


def eval_columns(truth: pl.LazyFrame, horizon_years: int) -> pl.LazyFrame:
    """Evaluation-only columns per (patient_id, year) from the generator's truth table.

    ``eval_oracle_risk`` is p^A = 1 if T* <= t else 1 - prod_{k=1..H}(1 - hazard_{t+k}); a missing future
    year (death) contributes no hazard.
    """
    names = truth.collect_schema().names()
    need = ["patient_id", "year", "hazard", "onset_year", "recorded_year"]
    missing = [c for c in need if c not in names]
    if missing:
        raise DataError(f"truth table: missing columns {missing}")
    base = truth.select(
        pl.col("patient_id").cast(pl.Int64),
        pl.col("year").cast(pl.Int16),
        pl.col("onset_year").cast(pl.Int16),
        pl.col("recorded_year").cast(pl.Int16),
        (1.0 - pl.col("hazard").cast(pl.Float64)).log().alias("_l0"),
    )
    acc = base
    for k in range(1, horizon_years + 1):
        shifted = base.select(
            "patient_id", (pl.col("year").cast(pl.Int32) - k).cast(pl.Int16).alias("year"), pl.col("_l0")
        ).rename({"_l0": f"_l{k}"})
        acc = acc.join(shifted, on=["patient_id", "year"], how="left")
    t = pl.col("year").cast(pl.Int32)
    onset = pl.col("onset_year").cast(pl.Int32)
    rec = pl.col("recorded_year").cast(pl.Int32)
    log_surv = pl.sum_horizontal([pl.col(f"_l{k}").fill_null(0.0) for k in range(1, horizon_years + 1)])
    risk = pl.when(onset <= t).then(1.0).otherwise(1.0 - log_surv.exp())
    return acc.select(
        "patient_id",
        "year",
        (onset <= t + horizon_years).fill_null(False).cast(pl.Int8).alias("eval_label_true"),
        risk.cast(pl.Float32).alias("eval_oracle_risk"),
        pl.col("onset_year").alias("eval_onset_year"),
        pl.col("recorded_year").alias("eval_recorded_year"),
        ((onset <= t).fill_null(False) & (rec.is_null() | (t < rec))).cast(pl.Int8).alias("eval_undiagnosed"),
    )
