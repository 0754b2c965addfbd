"""The raw observed-data contract: dtypes, nullability, hard ranges and row rules (pandera, polars backend).

One source of truth: :func:`raw_rules` builds every row check as a polars boolean expression (True = the row
passes, null-safe); :func:`raw_schema` wraps exactly those expressions as pandera checks. The validator
(``clinrisk.validate``) runs the pandera schema with ``lazy=True`` and turns the failure cases into
quarantine rows, so the report and the row mask can never disagree.

Hard ranges (:data:`HARD_RANGES`) mark values that are *physically impossible* in their labelled unit
(negative or zero concentrations, a 300 mmol/L glucose, a 4 m patient). Each analyte has one physical bound
in its canonical unit, expressed in every unit with the conversion factors of ``clinrisk.units``; a value
with a null unit is checked against the hull of its analyte's ranges. The bounds are deliberately wide:
plausibility ranges, unit inference and repair of mislabelled units belong to the features stage
(``clinrisk.units``), value by value, and must still see the generator's unit faults (docs/science.md §1.8, §6.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from clinrisk.generator.schema import OBSERVED_SCHEMA, UNIT_LEVELS
from clinrisk.units import (
    CHOLESTEROL_MGDL_PER_MMOLL,
    CM_PER_IN,
    CREATININE_UMOLL_PER_MGDL,
    GLUCOSE_MGDL_PER_MMOLL,
    HBA1C_NGSP_INTERCEPT,
    HBA1C_NGSP_SLOPE,
    KG_PER_LB,
    TRIGLYCERIDE_MGDL_PER_MMOLL,
)

if TYPE_CHECKING:
    import pandera.polars as pa

__all__ = [
    "DUPLICATE_KEY",
    "HARD_RANGES",
    "NON_NULLABLE",
    "OBSERVED_SCHEMA",
    "HardRange",
    "Rule",
    "ValueRanges",
    "raw_rules",
    "raw_schema",
    "rule_mask",
]

DUPLICATE_KEY = ("patient_id", "year")

# Columns that must never be null; every other observed column is nullable (missing vitals/labs, unit-null
# faults, no noise code this year).
NON_NULLABLE: frozenset[str] = frozenset(
    [
        "patient_id",
        "year",
        "sex",
        "birth_year",
        "region",
        "site_id",
        "ethnicity",
        "entry_year",
        "insurance",
        "family_history",
        "visits",
    ]
    + [c for c in OBSERVED_SCHEMA if c.startswith(("rx_", "dx_"))]
)

MAX_AGE_YEARS = 120  # oldest documented human ~122: an older patient-year is impossible


@dataclass(frozen=True)
class HardRange:
    """A closed interval ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``); non-finite values never pass."""

    lo: float
    hi: float
    lo_open: bool = False

    def contains(self, e: pl.Expr) -> pl.Expr:
        """Boolean expression: value finite and inside the interval (null stays null)."""
        low = e > self.lo if self.lo_open else e >= self.lo
        return e.is_finite() & low & (e <= self.hi)

    def text(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"


@dataclass(frozen=True)
class ValueRanges:
    """The hard range of one value column for each unit its unit column may carry."""

    value_col: str
    unit_col: str | None
    ranges: dict[str, HardRange]

    def hull(self) -> HardRange:
        """Smallest interval containing every unit's range (used when the unit is null)."""
        rs = list(self.ranges.values())
        lo = min(rs, key=lambda r: (r.lo, not r.lo_open))
        return HardRange(lo.lo, max(r.hi for r in rs), lo.lo_open)


def _positive(hi: float) -> HardRange:
    return HardRange(0.0, hi, lo_open=True)


def _mass_molar(col: str, hi_mgdl: float, mgdl_per_mmoll: float) -> ValueRanges:
    return ValueRanges(
        f"{col}_value",
        f"{col}_unit",
        {"mg/dL": _positive(hi_mgdl), "mmol/L": _positive(round(hi_mgdl / mgdl_per_mmoll, 1))},
    )


# Physical bounds in the canonical unit, with margin over the most extreme values ever reported:
# glucose ~2,660 mg/dL (HHS), total cholesterol ~3,000 mg/dL and triglycerides ~30,000 mg/dL (severe
# chylomicronaemia), creatinine ~30 mg/dL (anuric renal failure), HbA1c ~20 %, height 55-272 cm,
# weight 2-635 kg (adult cohort; lower bound keeps infant-scale typos out), SBP ~370 mmHg.
HBA1C_MAX_PCT = 30.0
HBA1C_MAX_IFCC = round((HBA1C_MAX_PCT - HBA1C_NGSP_INTERCEPT) / HBA1C_NGSP_SLOPE, 0)

HARD_RANGES: tuple[ValueRanges, ...] = (
    ValueRanges(
        "height_value",
        "height_unit",
        {"cm": HardRange(40.0, 300.0), "in": HardRange(round(40 / CM_PER_IN, 1), round(300 / CM_PER_IN, 1))},
    ),
    ValueRanges(
        "weight_value",
        "weight_unit",
        {"kg": HardRange(2.0, 700.0), "lb": HardRange(round(2 / KG_PER_LB, 1), round(700 / KG_PER_LB, 0))},
    ),
    ValueRanges("sbp_mmhg", None, {"mmHg": HardRange(20.0, 400.0)}),
    # HbA1c: % (NGSP) and mmol/mol (IFCC) via the master equation; IFCC 0 corresponds to NGSP 2.15 %, so
    # the mmol/mol range starts at 0 (open) and a small "%" value tagged mmol/mol still reaches the units layer.
    ValueRanges(
        "hba1c_value", "hba1c_unit", {"%": _positive(HBA1C_MAX_PCT), "mmol/mol": _positive(HBA1C_MAX_IFCC)}
    ),
    _mass_molar("glucose", 5000.0, GLUCOSE_MGDL_PER_MMOLL),
    _mass_molar("ldl", 4000.0, CHOLESTEROL_MGDL_PER_MMOLL),
    _mass_molar("hdl", 4000.0, CHOLESTEROL_MGDL_PER_MMOLL),
    _mass_molar("tc", 4000.0, CHOLESTEROL_MGDL_PER_MMOLL),
    _mass_molar("tg", 40_000.0, TRIGLYCERIDE_MGDL_PER_MMOLL),
    ValueRanges(
        "creatinine_value",
        "creatinine_unit",
        {"mg/dL": _positive(40.0), "umol/L": _positive(round(40.0 * CREATININE_UMOLL_PER_MGDL, 0))},
    ),
)


def _check_tables_agree() -> None:
    """Import-time guard: every unit in HARD_RANGES is a level of the schema's unit Enum and vice versa."""
    for vr in HARD_RANGES:
        if vr.unit_col is None:
            continue
        levels = UNIT_LEVELS[vr.unit_col.removesuffix("_unit")]
        if sorted(levels) != sorted(vr.ranges):
            raise RuntimeError(f"schemas.HARD_RANGES[{vr.value_col}]: units {list(vr.ranges)} != {levels}")


_check_tables_agree()


@dataclass(frozen=True)
class Rule:
    """One row check. ``passes`` is True for rows that satisfy it (null inputs pass unless stated)."""

    name: str  # pandera check name, unique per column
    column: str  # the pandera column the check is attached to
    passes: pl.Expr
    reason: str  # human-readable statement of the rule, used in the quarantine `_reason`
    report_column: str | None = None  # column label in reports when the rule spans columns
    # optional cheap precondition: only rows where ``guard`` is True can fail, and ``passes`` is evaluated on
    # those rows alone. The guard must select whole groups of any window ``passes`` uses (the duplicate
    # rules' guard selects every row of a duplicated key), so results equal a full evaluation. Keeps the
    # window-heavy duplicate rules off the common no-duplicate path.
    guard: pl.Expr | None = None

    @property
    def label(self) -> str:
        return self.report_column or self.column


def _range_rules(vr: ValueRanges) -> list[Rule]:
    v = pl.col(vr.value_col)
    rules: list[Rule] = []
    if vr.unit_col is None:
        ((unit, rng),) = vr.ranges.items()
        ok = rng.contains(v).fill_null(True)
        return [
            Rule(f"hard_range[{unit}]", vr.value_col, ok, f"{vr.value_col} in {unit} must be in {rng.text()}")
        ]
    u = pl.col(vr.unit_col)
    for unit, rng in vr.ranges.items():
        bad = (u == unit) & v.is_not_null() & ~rng.contains(v)
        rules.append(
            Rule(
                f"hard_range[{unit}]",
                vr.value_col,
                ~bad.fill_null(False),
                f"{vr.value_col} labelled {unit} must be in {rng.text()}",
            )
        )
    hull = vr.hull()
    bad = u.is_null() & v.is_not_null() & ~hull.contains(v)
    rules.append(
        Rule(
            "hard_range[unit=null]",
            vr.value_col,
            ~bad.fill_null(False),
            f"{vr.value_col} with null {vr.unit_col} must be in {hull.text()} (hull of its units)",
        )
    )
    return rules


def raw_rules(first_year: int, last_year: int) -> list[Rule]:
    """Every row rule of the raw observed table for the calendar ``first_year .. last_year``."""
    year, birth, entry = pl.col("year"), pl.col("birth_year"), pl.col("entry_year")
    age = year.cast(pl.Int32) - birth.cast(pl.Int32)
    rules = [
        Rule("ge_0", "patient_id", (pl.col("patient_id") >= 0).fill_null(True), "patient_id must be >= 0"),
        Rule(
            "calendar",
            "year",
            year.is_between(first_year, last_year).fill_null(True),
            f"year must be within the calendar {first_year}..{last_year}",
        ),
        Rule(
            "age_range",
            "birth_year",
            age.is_between(0, MAX_AGE_YEARS).fill_null(True),
            f"age = year - birth_year must be in [0, {MAX_AGE_YEARS}]",
            report_column="birth_year,year",
        ),
        Rule(
            "entry_order",
            "entry_year",
            ((entry >= birth) & (entry <= year)).fill_null(True),
            "entry_year must satisfy birth_year <= entry_year <= year",
            report_column="entry_year,birth_year,year",
        ),
        Rule("ge_0", "site_id", (pl.col("site_id") >= 0).fill_null(True), "site_id must be >= 0"),
        Rule("ge_0", "visits", (pl.col("visits") >= 0).fill_null(True), "visits must be >= 0"),
    ]
    for vr in HARD_RANGES:
        rules.extend(_range_rules(vr))
    # Duplicate (patient_id, year): identical copies keep the first occurrence (file order) and quarantine
    # the rest; copies that disagree are all quarantined, because nothing says which one is right.
    key = list(DUPLICATE_KEY)
    dup = pl.struct(key).is_duplicated()
    # distinct full rows sharing this row's key (hash is element-wise, so it is not re-evaluated per group)
    versions = pl.struct(pl.all()).hash().n_unique().over(key)
    first = pl.struct(key).is_first_distinct()
    label = ",".join(DUPLICATE_KEY)
    rules += [
        Rule(
            "duplicate_copy",
            "patient_id",
            ~(dup & (versions == 1) & ~first).fill_null(False),
            "identical copy of an earlier row for the same (patient_id, year); the first copy is kept",
            report_column=label,
            guard=dup,
        ),
        Rule(
            "duplicate_conflict",
            "patient_id",
            ~(dup & (versions > 1)).fill_null(False),
            "several different rows for the same (patient_id, year); all are quarantined",
            report_column=label,
            guard=dup,
        ),
    ]
    return rules


def rule_mask(rule: Rule, lf: pl.LazyFrame) -> pl.LazyFrame:
    """One-column boolean LazyFrame: which rows of ``lf`` pass ``rule`` (honours the rule's guard)."""
    if rule.guard is None:
        return lf.select(rule.passes.alias(rule.column))
    at_risk = lf.select(rule.guard.fill_null(False)).collect().to_series()
    out = pl.repeat(True, at_risk.len(), dtype=pl.Boolean, eager=True).alias(rule.column)
    if at_risk.any():
        sub = lf.filter(pl.lit(at_risk)).select(rule.passes).collect().to_series()
        out = out.scatter(at_risk.arg_true(), sub)
    return pl.LazyFrame([out])


def _as_check(rule: Rule) -> pa.Check:
    import pandera.polars as pa

    # no `error=`: pandera would report it instead of the name, which keys the reason table
    return pa.Check(lambda data: rule_mask(rule, data.lazyframe), name=rule.name)


def raw_schema(first_year: int, last_year: int) -> pa.DataFrameSchema:
    """The pandera schema of raw observed data (exact dtypes, nullability, every rule of :func:`raw_rules`).

    Category sets (sex, region, ethnicity, insurance, every ``*_unit``) are enforced by the Enum dtypes;
    ``clinrisk.validate`` casts raw strings to them and quarantines unknown levels before this schema runs.
    """
    # pandera is imported here, not at module level: the rules and ranges above are also read by the
    # feature steps and the model server, which never run the schema (pandera's import is ~0.8 s per process).
    import pandera.polars as pa

    by_col: dict[str, list[pa.Check]] = {c: [] for c in OBSERVED_SCHEMA}
    for rule in raw_rules(first_year, last_year):
        by_col[rule.column].append(_as_check(rule))
    columns = {
        c: pa.Column(dtype, checks=by_col[c], nullable=c not in NON_NULLABLE)
        for c, dtype in OBSERVED_SCHEMA.items()
    }
    return pa.DataFrameSchema(columns, name="raw_observed", strict=False, ordered=False)
