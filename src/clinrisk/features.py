"""The ONE feature function used by training and serving, the feature spec, and the per-shard stage.

``build_feature_frame(raw, spec)`` turns validated patient-years (any number of patients, any order) into
one feature row per patient-year: canonical units (``clinrisk.units``), derived BMI and eGFR (CKD-EPI
2021), age, history_years, missingness indicators, frozen categoricals, gap-aware aggregates over the
calendar window (t - X, t] (the values of ``rolling_*_by("year", "Xi").over("patient_id")``: a missing year
never pulls in an older one; each window summed from scratch, oldest row first), unlimited LOCF +
years_since_last, counts of visits/tests, and current + "ever" medication/comorbidity flags.

``clinrisk.features_rowwise`` evaluates these same definitions patient by patient for serving and is held
to bitwise equality with this function by tests; a change here must be mirrored there.

Categorical encoding: each categorical feature is a ``pl.Enum`` whose categories are frozen in the spec
(kept levels sorted, ``__OTHER__`` last; rare and unseen levels map to ``__OTHER__``, null stays null).
The Enum's physical codes are therefore consecutive integers from 0, identical in training and serving;
``feature_matrix`` hands LightGBM those codes (as float, NaN = missing) and ``categorical_features``
names the columns to declare as ``categorical_feature``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from clinrisk.errors import DataError
from clinrisk.feature_table import KEY_COLUMNS, LABEL_COLUMNS, OTHER
from clinrisk.feature_table import FeatureSpec as FeatureSpec  # re-exported: the clinical modules' import
from clinrisk.feature_table import categorical_features as categorical_features
from clinrisk.feature_table import check_feature_names as _check_names
from clinrisk.feature_table import feature_matrix as feature_matrix
from clinrisk.generator.schema import DX_COLUMNS, OBSERVED_SCHEMA, RX_COLUMNS
from clinrisk.units import ANALYTES, M_PER_CM, REGISTRY, normalise_units

CATEGORICAL_RAW = ("sex", "region", "ethnicity", "insurance", "site_id", "other_dx_code")
# Rolling families: canonical-unit labs and vitals (bmi, egfr derived).
ROLLED = ("hba1c", "glucose", "ldl", "hdl", "tc", "tg", "creatinine", "egfr", "sbp", "bmi", "weight")
FEATURE_UNITS: dict[str, str] = {
    **{a: REGISTRY[a].canonical for a in ANALYTES},
    "egfr": "mL/min/1.73m2",
    "sbp": "mmHg",
    "bmi": "kg/m2",
    "height_cm": "cm",
    "age": "years",
    "history_years": "years",
}
FLAGS = (*RX_COLUMNS, *DX_COLUMNS)  # dx_E11 is the label: never a feature
RAW_FIELDS: tuple[str, ...] = tuple(OBSERVED_SCHEMA)
ID_COLUMNS = KEY_COLUMNS
# Clinical raw columns that must never be features: the recorded diagnosis code (the label), birth and entry
# years (ids in disguise), and the generator's truth fields.
CLINICAL_FORBIDDEN = frozenset(
    {"dx_E11", "birth_year", "entry_year"}
    | {"g_latent", "hazard", "onset_year", "recorded_year", "delay", "false_code", "enrolled"}
)
# Everything the clinical guard refuses (shared keys/labels + the clinical raw columns).
FORBIDDEN_FEATURES = frozenset({*KEY_COLUMNS, *LABEL_COLUMNS}) | CLINICAL_FORBIDDEN


def check_feature_names(names: Sequence[str]) -> None:
    """The shared leakage guard (``clinrisk.feature_table``) with the clinical raw columns that must never
    be features (the diagnosis code the label is read from, birth/entry years, truth fields)."""
    _check_names(names, CLINICAL_FORBIDDEN)


def feature_layout(window_years: int, locf: bool) -> dict[str, str]:
    """Ordered feature name -> dtype name for a window X and LOCF setting (categoricals = "Enum")."""
    x = window_years
    out: dict[str, str] = {
        "age": "Int16",
        "history_years": "Int16",
        "sex": "Enum",
        "region": "Enum",
        "ethnicity": "Enum",
        "insurance": "Enum",
        "site_id": "Enum",
        "other_dx_code": "Enum",
        "family_history": "Int8",
        "height_cm": "Float32",
        "visits": "UInt8",
        f"visits_sum_{x}y": "UInt8",
        f"glycaemic_tests_{x}y": "UInt8",
        f"lipid_tests_{x}y": "UInt8",
        "n_comorb": "UInt8",
        "n_comorb_ever": "UInt8",
    }
    for lab in ROLLED:
        out[lab] = "Float32"
        out[f"{lab}_missing"] = "Int8"
        for agg in ("mean", "min", "max", "last", "slope"):
            out[f"{lab}_{agg}_{x}y"] = "Float32"
        out[f"{lab}_n_{x}y"] = "UInt8"
        if locf:
            out[f"{lab}_locf"] = "Float32"
            out[f"{lab}_years_since"] = "Int16"
    for flag in FLAGS:
        out[flag] = "Int8"
        out[f"{flag}_ever"] = "Int8"
    return out


def feature_units(names: Sequence[str]) -> dict[str, str]:
    """Unit of each feature whose value carries one (aggregates inherit the lab's canonical unit)."""
    out: dict[str, str] = {}
    for n in names:
        base = n.split("_")[0]
        if n in FEATURE_UNITS:
            out[n] = FEATURE_UNITS[n]
        elif base in FEATURE_UNITS and n.startswith(tuple(f"{lab}_" for lab in ROLLED)):
            if "_slope_" in n:
                out[n] = f"{FEATURE_UNITS[base]}/year"
            elif n.endswith("_years_since"):
                out[n] = "years"
            elif not (n.endswith("_missing") or "_n_" in n):
                out[n] = FEATURE_UNITS[base]
    return out


# ----------------------------------------------------------------------------------------------------
# casting and categoricals


def _require_columns(lf: pl.LazyFrame, needed: Sequence[str], what: str) -> None:
    have = set(lf.collect_schema().names())
    missing = [c for c in needed if c not in have]
    if missing:
        raise DataError(f"{what}: missing columns {missing}")


def cast_raw(raw: pl.LazyFrame) -> pl.LazyFrame:
    """Select the contract's raw fields with narrow dtypes; Enums/Categoricals become String so that an
    unseen level never fails a cast (it maps to __OTHER__ later)."""
    _require_columns(raw, RAW_FIELDS, "raw patient-years")
    exprs = []
    for name, dtype in OBSERVED_SCHEMA.items():
        if isinstance(dtype, pl.Enum | pl.Categorical):
            exprs.append(pl.col(name).cast(pl.String))
        else:
            exprs.append(pl.col(name).cast(dtype, strict=False))
    return raw.select(exprs)


def _category_source(name: str, rollups: dict[str, int]) -> pl.Expr:
    """String expression whose levels are counted / encoded for categorical ``name``."""
    e = pl.col(name).cast(pl.String)
    n = rollups.get(name)
    if n:
        e = e.str.slice(0, n)
    return e


def encode_categorical(name: str, levels: list[str], rollups: dict[str, int]) -> pl.Expr:
    """Map a raw categorical to the frozen Enum (unseen/rare -> __OTHER__, null stays null)."""
    src = _category_source(name, rollups)
    known = [lv for lv in levels if lv != OTHER]
    mapped = pl.when(src.is_null()).then(None).when(src.is_in(known)).then(src).otherwise(pl.lit(OTHER))
    return mapped.cast(pl.Enum(levels)).alias(name)


# ----------------------------------------------------------------------------------------------------
# derived clinical values


def egfr_ckd_epi_2021(scr_mg_dl: pl.Expr, age: pl.Expr, female: pl.Expr) -> pl.Expr:
    """CKD-EPI 2021 creatinine equation (race-free), mL/min/1.73 m² (docs/science.md §1.3); null where the
    creatinine is null (min/max_horizontal skip nulls, which would otherwise turn a missing creatinine
    into Scr = kappa, an eGFR that is a function of age and sex only)."""
    kappa = pl.when(female).then(0.7).otherwise(0.9)
    alpha = pl.when(female).then(-0.241).otherwise(-0.302)
    ratio = scr_mg_dl / kappa
    lo = pl.min_horizontal(ratio, pl.lit(1.0)).pow(alpha)
    hi = pl.max_horizontal(ratio, pl.lit(1.0)).pow(-1.200)
    sex_f = pl.when(female).then(1.012).otherwise(1.0)
    egfr = 142.0 * lo * hi * pl.lit(0.9938).pow(age.cast(pl.Float64)) * sex_f
    return pl.when(scr_mg_dl.is_not_null()).then(egfr)


def _sum_in_order(terms: Sequence[pl.Expr]) -> pl.Expr:
    """Left-to-right float sum of ``terms`` (oldest first), nulls skipped: ((t0 + t1) + t2)... from scratch,
    so a window's value depends on that window's rows only and a row-wise evaluator can repeat it exactly."""
    acc = terms[0].fill_null(0.0)
    for t in terms[1:]:
        acc = acc + t.fill_null(0.0)
    return acc


def _count_in_order(terms: Sequence[pl.Expr]) -> pl.Expr:
    return pl.sum_horizontal([t.cast(pl.Int32) for t in terms])


def window_aggregates(lab: str, x: int) -> list[pl.Expr]:
    """Aggregates of one lab over the calendar window (t - X, t]: mean, min, max, OLS slope on year (null
    with fewer than 2 points) and count. Needs the ``_<col>_b<k>`` columns of :func:`build_feature_frame`."""
    vals = [_back(lab, k) for k in range(x - 1, -1, -1)]  # oldest first
    xs = [_back("_x", k) for k in range(x - 1, -1, -1)]
    xm = [pl.when(v.is_not_null()).then(xk) for v, xk in zip(vals, xs, strict=True)]
    n_int = _count_in_order([v.is_not_null() for v in vals])
    n = n_int.cast(pl.Float64)
    sy = _sum_in_order(vals)
    sx = _sum_in_order(xm)
    sxy = _sum_in_order([a * v for a, v in zip(xm, vals, strict=True)])
    sxx = _sum_in_order([a * a for a in xm])
    den = n * sxx - sx * sx
    return [
        pl.when(n_int > 0).then(sy / n).alias(f"{lab}_mean_{x}y"),
        pl.min_horizontal(vals).alias(f"{lab}_min_{x}y"),
        pl.max_horizontal(vals).alias(f"{lab}_max_{x}y"),
        pl.when((n >= 2) & (den > 0)).then((n * sxy - sx * sy) / den).alias(f"{lab}_slope_{x}y"),
        n_int.alias(f"{lab}_n_{x}y"),
    ]


def _back(name: str, k: int) -> pl.Expr:
    """Column ``name`` of the patient's row ``k`` rows back when that row lies inside the window, else null
    (materialised as ``_<name>_b<k>`` by :func:`build_feature_frame`; k = 0 is the current row)."""
    return pl.col(name) if k == 0 else pl.col(f"_{name}_b{k}")


def build_feature_frame(raw: pl.LazyFrame, spec: FeatureSpec) -> pl.LazyFrame:
    """Validated raw patient-years -> ``patient_id, year, *spec.feature_names`` (one row per input row,
    sorted by patient_id, year). The same function serves training and serving."""
    x = spec.window_years
    lf = cast_raw(raw).sort("patient_id", "year")
    lf = normalise_units(lf)

    # Canonical values as Float64 for arithmetic; final features are cast to Float32.
    female = pl.col("sex") == "F"
    lf = lf.with_columns(
        _yr=pl.col("year").cast(pl.Int32),
        _x=(pl.col("year").cast(pl.Float64) - 2000.0),
        age=(pl.col("year") - pl.col("birth_year")).cast(pl.Int16),
        history_years=(pl.col("year") - pl.col("entry_year")).cast(pl.Int16),
        height_cm=pl.col("height").forward_fill().over("patient_id"),
        sbp=pl.col("sbp_mmhg").cast(pl.Float64),
    )
    lf = lf.with_columns(
        bmi=pl.col("weight") / (pl.col("height_cm") * M_PER_CM).pow(2),
        egfr=egfr_ckd_epi_2021(pl.col("creatinine"), pl.col("age"), female),
    )

    # Gap-aware calendar windows (t - X, t] per patient. Years are unique per patient, so the window's
    # rows are among the patient's previous X rows: ``_in{k}`` says whether the row k back is the same
    # patient and inside the window. Every aggregate is then computed from scratch over those rows (oldest
    # first). polars' rolling contexts update sums incrementally, so a window's float sum depended on the
    # patient's earlier rows - a full training history and a served X+1-year history could differ in the
    # last bit; here each value depends on its window's rows only (bitwise train/serve parity).
    # Rows k back (k < X) that are the same patient and inside the window, materialised once as columns
    # so that the aggregate expressions stay small (a small request's query is mostly planning).
    inside = {
        k: (pl.col("patient_id").shift(k) == pl.col("patient_id"))
        & (pl.col("_yr").shift(k) > pl.col("_yr") - x)
        for k in range(1, x)
    }
    lf = lf.with_columns(
        _glycaemic=pl.col("hba1c").is_not_null() | pl.col("glucose").is_not_null(),
        _lipid=pl.any_horizontal([pl.col(c).is_not_null() for c in ("ldl", "hdl", "tc", "tg")]),
        _visits=pl.col("visits").fill_null(0),
    )
    lf = lf.with_columns(
        [
            pl.when(inside[k].fill_null(False)).then(pl.col(c).shift(k)).alias(f"_{c}_b{k}")
            for k in range(1, x)
            for c in (*ROLLED, "_x", "_glycaemic", "_lipid", "_visits")
        ]
    )

    def _window_count(name: str, alias: str) -> pl.Expr:
        return _count_in_order([_back(name, k).fill_null(False) for k in range(x - 1, -1, -1)]).alias(alias)

    aggs = [a for lab in ROLLED for a in window_aggregates(lab, x)]
    aggs += [
        _count_in_order([_back("_visits", k).fill_null(0) for k in range(x - 1, -1, -1)]).alias(
            f"visits_sum_{x}y"
        ),
        _window_count("_glycaemic", f"glycaemic_tests_{x}y"),
        _window_count("_lipid", f"lipid_tests_{x}y"),
    ]
    lf = lf.with_columns(aggs)

    exprs: list[pl.Expr] = []
    for lab in ROLLED:
        v = pl.col(lab)
        present = v.is_not_null()
        last_year = pl.when(present).then(pl.col("year")).forward_fill().over("patient_id")
        years_since = (pl.col("year") - last_year).cast(pl.Int16)
        locf = v.forward_fill().over("patient_id")
        exprs += [
            v.alias(lab),
            (~present).cast(pl.Int8).alias(f"{lab}_missing"),
            pl.when(years_since < x).then(locf).alias(f"{lab}_last_{x}y"),
        ]
        if spec.locf:
            exprs += [locf.alias(f"{lab}_locf"), years_since.alias(f"{lab}_years_since")]

    n_comorb = pl.sum_horizontal([pl.col(c).fill_null(False).cast(pl.UInt8) for c in DX_COLUMNS])
    exprs += [
        pl.col("family_history").cast(pl.Int8),
        pl.col("visits"),
        pl.col(f"visits_sum_{x}y").clip(0, 255),
        n_comorb.alias("n_comorb"),
        pl.sum_horizontal(
            [pl.col(c).fill_null(False).cast(pl.UInt8).cum_max().over("patient_id") for c in DX_COLUMNS]
        ).alias("n_comorb_ever"),
    ]
    for flag in FLAGS:
        f = pl.col(flag).fill_null(False).cast(pl.Int8)
        exprs += [f.alias(flag), f.cum_max().over("patient_id").alias(f"{flag}_ever")]
    for name in CATEGORICAL_RAW:
        if name in spec.categories:
            exprs.append(encode_categorical(name, spec.categories[name], spec.rollups))

    lf = lf.with_columns(exprs)
    # One schema resolution: in the comprehension's condition it re-planned the query once per feature.
    built = set(lf.collect_schema().names())
    missing = [n for n in spec.feature_names if n not in built]
    if missing:
        raise DataError(f"feature spec: features {missing} cannot be built by this clinrisk version")
    return lf.select(
        pl.col("patient_id"),
        pl.col("year"),
        *[pl.col(n).cast(spec.polars_dtype(n)) for n in spec.feature_names],
    )


# ----------------------------------------------------------------------------------------------------
# fitting the spec (training-split rows only)


def fit_feature_spec(train_raw: pl.LazyFrame, cfg: Any) -> FeatureSpec:
    """Learn the frozen category levels from TRAINING-split rows only and return the spec.

    ``train_raw`` may hold every patient: rows outside the training split (hash bucket and, for the
    temporal split, training years) are filtered out here, so nothing leaks from validation/test.
    """
    from clinrisk.splits import assign_split

    fcfg = cfg.features
    layout = feature_layout(fcfg.window_years, fcfg.locf)
    rollups = {"other_dx_code": fcfg.other_dx_rollup_chars} if fcfg.other_dx_rollup_chars else {}
    _require_columns(train_raw, ["patient_id", "year", *CATEGORICAL_RAW], "training raw data")
    rows = assign_split(
        train_raw.select("patient_id", "year", *CATEGORICAL_RAW), cfg.split, cfg.labels.horizon_years
    ).filter(pl.col("split") == "train")
    # One streaming group-by over (column, level) pairs: memory in the number of levels, not of rows (a
    # value_counts per column inside one select ran in memory: 643 MB at 20M raw rows against 326 at 2M).
    long = pl.concat(
        [
            rows.select(pl.lit(c).alias("_column"), _category_source(c, rollups).alias("_level"))
            for c in CATEGORICAL_RAW
        ]
    )
    level_counts = (
        long.group_by("_column", "_level").agg(pl.len().alias("_count")).collect(engine="streaming")
    )
    n_rows = int(rows.select(pl.len()).collect(engine="streaming").item())
    if n_rows == 0:
        raise DataError("training raw data: no training-split rows to fit the feature spec on")
    categories: dict[str, list[str]] = {}
    for c in CATEGORICAL_RAW:
        vc = level_counts.filter(pl.col("_column") == c)
        pairs = [(lvl, int(n)) for lvl, n in zip(vc["_level"], vc["_count"], strict=True) if lvl is not None]
        pairs.sort(key=lambda p: (-p[1], p[0]))
        keep = [lvl for lvl, n in pairs if n / n_rows >= fcfg.min_category_share]
        keep = sorted(keep[: fcfg.max_categories - 1])
        categories[c] = [*keep, OTHER]
    names = list(layout)
    check_feature_names(names)
    return FeatureSpec(
        window_years=fcfg.window_years,
        locf=fcfg.locf,
        horizon_years=cfg.labels.horizon_years,
        feature_names=names,
        dtypes=layout,
        categories=categories,
        units=feature_units(names),
        raw_fields=list(RAW_FIELDS),
        rollups=rollups,
        forbidden=sorted(CLINICAL_FORBIDDEN),
    )


# ----------------------------------------------------------------------------------------------------
# model-matrix helpers (shared ones live in clinrisk.feature_table)


def feature_columns(spec: FeatureSpec) -> list[str]:
    """Exactly the columns a model may read: ``spec.feature_names`` (never ids/labels/eval_)."""
    check_feature_names(spec.feature_names)
    return list(spec.feature_names)


# ----------------------------------------------------------------------------------------------------
# features + labels + split of one set of patients (the stage around it: clinrisk.features_stage)


def _first_prediction_year(cfg: Any) -> int:
    return int(cfg.generate.first_year + cfg.generate.burn_in_years)


def features_lazy(raw: pl.LazyFrame, spec: FeatureSpec, cfg: Any, truth: pl.LazyFrame | None) -> pl.LazyFrame:
    """Eligible rows of ``raw``: ids + split, features, labels (+ eval_* from ``truth``)."""
    from clinrisk.calibration import VALIDATION_PART_SALT, patient_fold_expr
    from clinrisk.labels import EVAL_COLUMNS, build_labels, eval_columns
    from clinrisk.splits import assign_split, label_known_through_expr, split_expr

    h = cfg.labels.horizon_years
    if spec.horizon_years != h:
        raise DataError(f"feature spec: horizon_years {spec.horizon_years} != labels.horizon_years {h}")
    last_year = cfg.generate.last_year
    labels = build_labels(
        raw,
        cfg.labels,
        first_prediction_year=_first_prediction_year(cfg),
        last_year=last_year,
        known_through=label_known_through_expr(cfg.split, h, last_year),
        reweight_rows=split_expr(cfg.split, h) == "train",  # E1b drops training rows only
        # the rows clinrisk.train fits the calibration map on (labels.calibration_target)
        calibration_rows=(split_expr(cfg.split, h) == "validation")
        & (patient_fold_expr(2, salt=VALIDATION_PART_SALT) == 1),
    )
    feats = build_feature_frame(raw, spec)
    lf = assign_split(labels.join(feats, on=["patient_id", "year"], how="left"), cfg.split, h)
    cols = [*ID_COLUMNS, *spec.feature_names, *LABEL_COLUMNS]
    if truth is not None:
        lf = lf.join(eval_columns(truth, h), on=["patient_id", "year"], how="left")
        cols += list(EVAL_COLUMNS)
    return lf.select(cols).sort("patient_id", "year")
