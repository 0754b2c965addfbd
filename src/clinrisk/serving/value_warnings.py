"""Per-instance warnings for measurement values the feature function drops or reinterprets.

A value that passes the request contract (within the hard range of its labelled unit) can still be
implausible for that unit (HbA1c 5.6 labelled mmol/mol, glucose 110 labelled mmol/L, 80 lb for an adult of
180 cm): the units layer then sets it to null, and the model falls back to older years. Without a unit, a
value is read in the only unit whose plausible range fits it. Both are reported to the caller, with the
same rules the features use (:func:`clinrisk.features_rowwise.canonical_values`, bitwise equal to the
feature function), as ``{"field", "value", "unit", "reason"}``:

- ``implausible_for_unit``: labelled unit given, value outside that unit's plausible range (dropped);
- ``implausible_bmi_for_unit``: a weight whose BMI is implausible in its labelled unit but plausible in the
  other (a flipped label; dropped);
- ``implausible_any_unit``: no unit, no unit's range fits (dropped);
- ``ambiguous_missing_unit``: no unit, several fit and nothing decides (dropped);
- ``unit_inferred``: no unit, read in ``inferred_unit`` (kept, converted).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clinrisk.features_rowwise import canonical_values
from clinrisk.units import BMI_PLAUSIBLE, CM_PER_IN, KG_PER_LB, REGISTRY, Analyte

DROPPED_REASONS = (
    "implausible_for_unit",
    "implausible_bmi_for_unit",
    "implausible_any_unit",
    "ambiguous_missing_unit",
)


def _f32(v: Any) -> float | None:
    return None if v is None else float(np.float32(v))


def _in(v: float, rng: tuple[float, float]) -> bool:
    return rng[0] <= v <= rng[1]


def _height_reference(records: list[dict[str, Any]], f32: bool = True) -> list[float | None]:
    """Labelled plausible height in cm carried forward (current row included), as the units layer
    (``f32=False``: on the raw values, for the fast path only)."""
    a = REGISTRY["height"]
    cm_rng, in_rng = a.units["cm"].plausible, a.units["in"].plausible
    out: list[float | None] = []
    last: float | None = None
    for r in records:
        v, u = r.get("height_value"), r.get("height_unit")
        if v is not None and f32:
            v = _f32(v)
        if v is not None and u == "cm" and _in(v, cm_rng):
            last = v
        elif v is not None and u == "in" and _in(v, in_rng):
            last = v * CM_PER_IN
        out.append(last)
    return out


def _dropped_reason(a: Analyte, v: float, unit: str | None) -> str:
    if unit is not None:
        rule = a.units.get(unit)
        return (
            "implausible_bmi_for_unit"
            if rule is not None and _in(v, rule.plausible)
            else "implausible_for_unit"
        )
    fits = sum(_in(v, rule.plausible) for rule in a.units.values())
    return "implausible_any_unit" if fits == 0 else "ambiguous_missing_unit"


def _inferred_unit(a: Analyte, v: float, canonical: float) -> str | None:
    for name, rule in a.units.items():
        if _in(v, rule.plausible) and float(rule.to_canonical(v)) == canonical:  # type: ignore[arg-type]
            return name
    return None


def _safe_range(rng: tuple[float, float]) -> tuple[float, float]:
    """``rng`` shrunk by a margin far wider than Float32 rounding (the features see Float32 values)."""
    m = 1e-5 * max(abs(rng[0]), abs(rng[1]), 1.0)
    return rng[0] + m, rng[1] - m


SAFE: dict[tuple[str, str], tuple[float, float]] = {
    (a.name, unit): _safe_range(rule.plausible) for a in REGISTRY.values() for unit, rule in a.units.items()
}
SAFE_BMI = _safe_range(BMI_PLAUSIBLE)


def _surely_kept(a: Analyte, v: Any, unit: str | None, href: float | None) -> bool:
    """Fast path: a labelled value safely plausible for its unit (and, for a weight, with a safely plausible
    BMI in that unit) is kept by the units layer; anything else takes the exact path."""
    if v is None:
        return True
    rng = SAFE.get((a.name, unit)) if unit is not None else None
    if rng is None or not rng[0] <= v <= rng[1]:
        return False
    if a.name == "weight" and href is not None:
        h_m = href / 100.0
        bmi = (v if unit == "kg" else v * KG_PER_LB) / (h_m * h_m)
        return SAFE_BMI[0] <= bmi <= SAFE_BMI[1]
    return True


def instance_warnings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Warnings for one patient's validated yearly records (oldest first); empty when nothing changes."""
    out: list[dict[str, Any]] = []
    href: list[float | None] | None = None
    for a in REGISTRY.values():
        vcol, ucol = a.value_col, a.unit_col
        if a.name == "weight":
            rough = _height_reference(records, f32=False)
            if all(_surely_kept(a, r.get(vcol), r.get(ucol), h) for r, h in zip(records, rough, strict=True)):
                continue
            href = _height_reference(records)
        elif all(_surely_kept(a, r.get(vcol), r.get(ucol), None) for r in records):
            continue
        raw = [r.get(vcol) for r in records]
        vals = [_f32(v) for v in raw]
        units = [r.get(a.unit_col) for r in records]
        canon = canonical_values(a, vals, units, href if a.name == "weight" else None)
        for j, (v, u, c) in enumerate(zip(vals, units, canon, strict=True)):
            if v is None:
                continue
            where = {"field": f"history[{j}].{a.value_col}", "value": raw[j], "unit": u}
            if c is None:
                out.append({**where, "reason": _dropped_reason(a, v, u)})
            elif u is None:
                out.append({**where, "reason": "unit_inferred", "inferred_unit": _inferred_unit(a, v, c)})
    return out
