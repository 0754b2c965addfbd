"""Per-analyte unit registry, conversion to canonical units, unit inference and unit quarantine.

docs/science.md §6. Conversions are keyed on (analyte, from_unit, to_unit), never on the unit pair alone,
because mass <-> molar factors depend on the molar mass. HbA1c % <-> mmol/mol is the IFCC master
equation (affine), not a unit factor: pint would turn 5.7 % into 57 mmol/mol, which is wrong (38.8).

Cleaning rules, value by value (vectorised polars expressions):

- unit present and allowed, value plausible for that unit  -> converted to the canonical unit;
- unit present and allowed, value implausible for it       -> null + quarantine ``implausible_for_unit``
  (this catches the generator's wrong-label faults, e.g. a mg/dL glucose labelled mmol/L,
  and a labelled weight whose BMI is implausible in its unit but plausible in the other (flipped label);
- unit present but not a unit of this analyte              -> null + quarantine ``incompatible_unit``;
- unit missing, exactly one unit's plausible range fits     -> inferred and converted;
- unit missing, value fits several ranges                   -> weight: within-patient consistency with the
  last labelled weight, then BMI plausibility with the patient's height; otherwise null + quarantine
  ``ambiguous_missing_unit`` (never guessed);
- unit missing, no range fits                               -> null + quarantine ``implausible_any_unit``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from clinrisk.entity_blocks import within
from clinrisk.errors import DataError

# IFCC master equation (Hoelzel 2004; docs/science.md §6.1): NGSP % = 0.09148 * IFCC + 2.152.
HBA1C_NGSP_SLOPE = 0.09148
HBA1C_NGSP_INTERCEPT = 2.152

# Conventional factors: canonical = alternative * factor (docs/science.md §6.1).
GLUCOSE_MGDL_PER_MMOLL = 18.016
CHOLESTEROL_MGDL_PER_MMOLL = 38.67
TRIGLYCERIDE_MGDL_PER_MMOLL = 88.57
CREATININE_UMOLL_PER_MGDL = 88.4
CM_PER_IN = 2.54
KG_PER_LB = 0.45359237
M_PER_CM = 1.0 / 100.0  # a multiplication, as polars evaluates "/ 100.0" (see _div)

QUARANTINE_REASONS = (
    "implausible_for_unit",
    "incompatible_unit",
    "ambiguous_missing_unit",
    "implausible_any_unit",
)

ExprFn = Callable[[pl.Expr], pl.Expr]


@dataclass(frozen=True)
class UnitRule:
    """How one unit of an analyte maps to the canonical unit, and where its values are plausible."""

    to_canonical: ExprFn
    from_canonical: ExprFn
    plausible: tuple[float, float]


@dataclass(frozen=True)
class Analyte:
    """One analyte: raw value/unit columns, canonical unit and its allowed units."""

    name: str
    canonical: str
    units: dict[str, UnitRule] = field(default_factory=dict)

    @property
    def value_col(self) -> str:
        return f"{self.name}_value"

    @property
    def unit_col(self) -> str:
        return f"{self.name}_unit"


def _identity(e: pl.Expr) -> pl.Expr:
    return e


def _mul(f: float) -> ExprFn:
    return lambda e: e * f


def _div(f: float) -> ExprFn:
    # polars divides by a scalar as a multiplication by its reciprocal; spelled out so that the same rule
    # applied to a Python float (clinrisk.features_rowwise, convert_value) is bitwise the polars result.
    inverse = 1.0 / f
    return lambda e: e * inverse


def _ifcc_to_ngsp(e: pl.Expr) -> pl.Expr:
    return e * HBA1C_NGSP_SLOPE + HBA1C_NGSP_INTERCEPT


def _ngsp_to_ifcc(e: pl.Expr) -> pl.Expr:
    return (e - HBA1C_NGSP_INTERCEPT) * (1.0 / HBA1C_NGSP_SLOPE)  # reciprocal: see _div


def _mass_molar(canonical_range: tuple[float, float], molar_range: tuple[float, float], f: float) -> dict:
    return {
        "mg/dL": UnitRule(_identity, _identity, canonical_range),
        "mmol/L": UnitRule(_mul(f), _div(f), molar_range),
    }


# Plausibility ranges (wider than the generator's clip ranges, narrower than the raw hard ranges) chosen so
# that the two units of an analyte do not overlap except where the science memo says they do
# (HbA1c 15-18, weight kg/lb).
REGISTRY: dict[str, Analyte] = {
    "glucose": Analyte("glucose", "mg/dL", _mass_molar((40.0, 600.0), (2.2, 33.3), GLUCOSE_MGDL_PER_MMOLL)),
    "ldl": Analyte("ldl", "mg/dL", _mass_molar((15.0, 400.0), (0.39, 10.3), CHOLESTEROL_MGDL_PER_MMOLL)),
    "hdl": Analyte("hdl", "mg/dL", _mass_molar((10.0, 150.0), (0.26, 3.9), CHOLESTEROL_MGDL_PER_MMOLL)),
    "tc": Analyte("tc", "mg/dL", _mass_molar((50.0, 500.0), (1.3, 12.9), CHOLESTEROL_MGDL_PER_MMOLL)),
    "tg": Analyte("tg", "mg/dL", _mass_molar((20.0, 2500.0), (0.2, 17.0), TRIGLYCERIDE_MGDL_PER_MMOLL)),
    "creatinine": Analyte(
        "creatinine",
        "mg/dL",
        {
            "mg/dL": UnitRule(_identity, _identity, (0.2, 15.0)),
            "umol/L": UnitRule(
                _div(CREATININE_UMOLL_PER_MGDL), _mul(CREATININE_UMOLL_PER_MGDL), (18.0, 1330.0)
            ),
        },
    ),
    "hba1c": Analyte(
        "hba1c",
        "%",
        {
            "%": UnitRule(_identity, _identity, (3.5, 18.0)),
            "mmol/mol": UnitRule(_ifcc_to_ngsp, _ngsp_to_ifcc, (15.0, 175.0)),
        },
    ),
    "height": Analyte(
        "height",
        "cm",
        {
            "cm": UnitRule(_identity, _identity, (120.0, 220.0)),
            "in": UnitRule(_mul(CM_PER_IN), _div(CM_PER_IN), (47.0, 87.0)),
        },
    ),
    "weight": Analyte(
        "weight",
        "kg",
        {
            "kg": UnitRule(_identity, _identity, (30.0, 300.0)),
            "lb": UnitRule(_mul(KG_PER_LB), _div(KG_PER_LB), (66.0, 660.0)),
        },
    ),
}

ANALYTES: tuple[str, ...] = tuple(REGISTRY)
CANONICAL_UNITS: dict[str, str] = {a.name: a.canonical for a in REGISTRY.values()}

# Within-patient weight consistency: an unlabelled weight is read in the unit that puts it within this
# relative distance of the patient's last labelled weight (kg and lb differ by a factor 2.2).
WEIGHT_CONSISTENCY_TOL = 0.25
BMI_PLAUSIBLE = (15.0, 65.0)


def convert(analyte: str, from_unit: str, to_unit: str) -> ExprFn:
    """Conversion function for ``analyte`` from ``from_unit`` to ``to_unit`` (keyed on all three)."""
    a = REGISTRY.get(analyte)
    if a is None:
        raise DataError(f"units: unknown analyte {analyte!r}; known: {', '.join(ANALYTES)}")
    for u in (from_unit, to_unit):
        if u not in a.units:
            raise DataError(
                f"units: {analyte} has no unit {u!r} (allowed: {', '.join(a.units)}); "
                "mass<->molar and cross-dimension conversions are not defined"
            )
    src, dst = a.units[from_unit], a.units[to_unit]
    return lambda e: dst.from_canonical(src.to_canonical(e))


def convert_value(analyte: str, value: float, from_unit: str, to_unit: str) -> float:
    """Scalar convenience wrapper around :func:`convert` (tests, serving error messages)."""
    out = pl.select(convert(analyte, from_unit, to_unit)(pl.lit(value, dtype=pl.Float64))).item()
    return float(out)


def _in(e: pl.Expr, rng: tuple[float, float]) -> pl.Expr:
    return (e >= rng[0]) & (e <= rng[1])


def _weight_reference_kg(a: Analyte) -> pl.Expr:
    """Last *labelled* weight (kg) strictly before this row, per patient (causal, so serving agrees)."""
    v = pl.col(a.value_col).cast(pl.Float64)
    u = pl.col(a.unit_col).cast(pl.String)
    labelled = (
        pl.when((u == "kg") & _in(v, a.units["kg"].plausible))
        .then(v)
        .when((u == "lb") & _in(v, a.units["lb"].plausible))
        .then(v * KG_PER_LB)
    )
    return labelled.shift(1).forward_fill().over("patient_id")


def _height_reference_cm() -> pl.Expr:
    """Patient's height in cm from labelled rows so far (current row included), carried forward."""
    h = REGISTRY["height"]
    v = pl.col(h.value_col).cast(pl.Float64)
    u = pl.col(h.unit_col).cast(pl.String)
    cm = (
        pl.when((u == "cm") & _in(v, h.units["cm"].plausible))
        .then(v)
        .when((u == "in") & _in(v, h.units["in"].plausible))
        .then(v * CM_PER_IN)
    )
    return cm.forward_fill().over("patient_id")


def _resolution(a: Analyte) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(canonical value Float64, quarantine reason String, inferred flag Boolean) expressions."""
    v = pl.col(a.value_col).cast(pl.Float64)
    u = pl.col(a.unit_col).cast(pl.String)
    units = list(a.units)
    fits = {name: _in(v, rule.plausible) for name, rule in a.units.items()}
    n_fit = pl.sum_horizontal([f.cast(pl.Int8) for f in fits.values()])

    value: Any = pl.when(v.is_null()).then(None)
    if a.name == "weight":
        # kg and lb ranges overlap over most adults, so a flipped label (80 kg tagged "lb") is plausible
        # for the label; the patient's height exposes it: the BMI is implausible in the labelled unit and
        # plausible in the other one. Refused (quarantined), never silently converted.
        # (Unknown height: null, never flipped.)
        h2 = (_height_reference_cm() * M_PER_CM).pow(2)
        as_kg, as_lb = _in(v / h2, BMI_PLAUSIBLE), _in(v * KG_PER_LB / h2, BMI_PLAUSIBLE)
        flipped = ((u == "kg") & ~as_kg & as_lb) | ((u == "lb") & ~as_lb & as_kg)
        value = value.when(flipped.fill_null(False)).then(None)
    for name, rule in a.units.items():
        value = value.when((u == name) & fits[name]).then(rule.to_canonical(v))
    # unit missing: infer only when exactly one plausible range fits.
    for name, rule in a.units.items():
        value = value.when(u.is_null() & fits[name] & (n_fit == 1)).then(rule.to_canonical(v))
    inferred = u.is_null() & v.is_not_null() & (n_fit == 1)

    if a.name == "weight":
        ref = _weight_reference_kg(a)
        kg, lb = v, v * KG_PER_LB
        near_kg = ((kg / ref) - 1.0).abs() <= WEIGHT_CONSISTENCY_TOL
        near_lb = ((lb / ref) - 1.0).abs() <= WEIGHT_CONSISTENCY_TOL
        h_m = _height_reference_cm() * M_PER_CM
        bmi_kg = _in(kg / (h_m * h_m), BMI_PLAUSIBLE)
        bmi_lb = _in(lb / (h_m * h_m), BMI_PLAUSIBLE)
        ambiguous = u.is_null() & (n_fit > 1)
        pick_kg = ambiguous & (
            (near_kg.fill_null(False) & ~near_lb.fill_null(False))
            | (ref.is_null() & bmi_kg.fill_null(False) & ~bmi_lb.fill_null(False))
        )
        pick_lb = ambiguous & (
            (near_lb.fill_null(False) & ~near_kg.fill_null(False))
            | (ref.is_null() & bmi_lb.fill_null(False) & ~bmi_kg.fill_null(False))
        )
        value = value.when(pick_kg).then(kg).when(pick_lb).then(lb)
        inferred = inferred | pick_kg | pick_lb
        resolved_ambiguous = pick_kg | pick_lb
    else:
        resolved_ambiguous = pl.lit(False)
    value = value.otherwise(None)

    reason = (
        pl.when(v.is_null())
        .then(None)
        .when(u.is_not_null() & ~u.is_in(units))
        .then(pl.lit("incompatible_unit"))
        .when(u.is_not_null() & (value.is_null()))
        .then(pl.lit("implausible_for_unit"))
        .when(u.is_null() & (n_fit > 1) & ~resolved_ambiguous)
        .then(pl.lit("ambiguous_missing_unit"))
        .when(u.is_null() & (n_fit == 0))
        .then(pl.lit("implausible_any_unit"))
        .otherwise(None)
    )
    return value, reason, inferred


def canonical_expr(analyte: str) -> pl.Expr:
    """Canonical-unit Float64 value of ``analyte`` (null where it cannot be converted); needs patient_id
    sorted by year for the weight consistency rule."""
    return _resolution(REGISTRY[analyte])[0]


def normalise_units(raw: pl.LazyFrame, analytes: tuple[str, ...] = ANALYTES) -> pl.LazyFrame:
    """Add one canonical Float64 column per analyte (named after it), e.g. ``hba1c`` in %.

    ``raw`` must be sorted by (patient_id, year) within each patient for the causal weight rule.
    """
    return raw.with_columns([canonical_expr(a).alias(a) for a in analytes])


UNIT_QUARANTINE_SCHEMA = {
    "patient_id": pl.Int64,
    "year": pl.Int16,
    "analyte": pl.String,
    "raw_value": pl.Float32,
    "raw_unit": pl.String,
    "reason": pl.String,
}


def unit_quarantine(raw: pl.LazyFrame, analytes: tuple[str, ...] = ANALYTES) -> pl.LazyFrame:
    """Long table of values the units layer refused: (patient_id, year, analyte, raw_value, raw_unit,
    reason). ``raw`` sorted by (patient_id, year)."""
    parts = []
    for name in analytes:
        _, reason, _ = _resolution(REGISTRY[name])
        parts.append(_refused_rows(raw, name, reason))
    return pl.concat(parts, how="vertical")


def _refused_rows(lf: pl.LazyFrame, name: str, reason: pl.Expr) -> pl.LazyFrame:
    """The rows of ``lf`` whose analyte ``name`` was refused (``reason`` not null), as quarantine rows."""
    a = REGISTRY[name]
    return lf.select(
        pl.col("patient_id").cast(pl.Int64),
        pl.col("year").cast(pl.Int16),
        pl.lit(name).alias("analyte"),
        pl.col(a.value_col).cast(pl.Float32).alias("raw_value"),
        pl.col(a.unit_col).cast(pl.String).alias("raw_unit"),
        reason.alias("reason"),
    ).filter(pl.col("reason").is_not_null())


def unit_counts(raw: pl.LazyFrame, analytes: tuple[str, ...] = ANALYTES) -> dict[str, dict[str, int]]:
    """Per analyte: values present, converted from a non-canonical unit, inferred, and quarantined by
    reason (summary.json). ``raw`` sorted by (patient_id, year)."""
    cols = []
    for name in analytes:
        value, reason, inferred = _resolution(REGISTRY[name])
        cols += [value.alias(f"_{name}_v"), reason.alias(f"_{name}_r"), inferred.alias(f"_{name}_i")]
    # Materialise the per-value resolution once, then count (the weight rule has window expressions).
    return _count_resolved(raw.with_columns(cols), analytes)


def _count_resolved(lf: pl.LazyFrame, analytes: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """The counts of :func:`unit_counts` from a frame holding the ``_<analyte>_{v,r,i}`` columns."""
    exprs = []
    for name in analytes:
        a = REGISTRY[name]
        u = pl.col(a.unit_col).cast(pl.String)
        v, r, i = pl.col(f"_{name}_v"), pl.col(f"_{name}_r"), pl.col(f"_{name}_i")
        exprs += [
            pl.col(a.value_col).is_not_null().sum().alias(f"{name}|present"),
            (v.is_not_null() & u.is_not_null() & (u != a.canonical)).sum().alias(f"{name}|converted"),
            (i & v.is_not_null()).sum().alias(f"{name}|inferred"),
        ]
        exprs += [(r == q).sum().alias(f"{name}|{q}") for q in QUARANTINE_REASONS]
    row = lf.select(exprs).collect().row(0, named=True)
    out: dict[str, dict[str, int]] = {}
    for key, val in row.items():
        name, what = key.split("|")
        out.setdefault(name, {})[what] = int(val or 0)
    return out


def unit_audit(
    raw: pl.LazyFrame,
    analytes: tuple[str, ...] = ANALYTES,
    blocks: list[tuple[int, int | None]] | None = None,
) -> tuple[pl.DataFrame, dict[str, dict[str, int]]]:
    """``(unit_quarantine(raw).collect(), unit_counts(raw))`` with each value resolved once, not twice.

    The resolution (the weight rule's per-patient windows above all) is most of the cost of both, so the
    resolved value/reason/inferred columns are materialised once and the quarantine rows and the counts
    are both read from them. ``raw`` sorted by (patient_id, year). ``blocks``: patient-id ranges
    (:func:`clinrisk.entity_blocks.block_bounds`) resolved one at a time, so that only a block is
    materialised; every rule reads one patient's rows, so the result is the same (the quarantine rows of
    each analyte stay in patient order, the counts add up).
    """
    cols = []
    for name in analytes:
        value, reason, inferred = _resolution(REGISTRY[name])
        cols += [value.alias(f"_{name}_v"), reason.alias(f"_{name}_r"), inferred.alias(f"_{name}_i")]
    per_analyte: dict[str, list[pl.DataFrame]] = {name: [] for name in analytes}
    counts: dict[str, dict[str, int]] = {}
    parts: list[pl.LazyFrame] = (
        [raw.filter(within("patient_id", lo, hi)) for lo, hi in blocks] if blocks else [raw]
    )
    for part in parts:
        resolved = part.with_columns(cols).collect(engine="streaming").lazy()
        for name in analytes:
            per_analyte[name].append(_refused_rows(resolved, name, pl.col(f"_{name}_r")).collect())
        for name, what in _count_resolved(resolved, analytes).items():
            for key, n in what.items():
                counts.setdefault(name, {})[key] = counts.get(name, {}).get(key, 0) + n
        del resolved
    quarantine = pl.concat([f for name in analytes for f in per_analyte[name]], how="vertical")
    return quarantine, counts
