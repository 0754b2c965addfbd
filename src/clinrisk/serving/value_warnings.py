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
from clinrisk.units import CM_PER_IN, REGISTRY, Analyte

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


def _height_reference(records: list[dict[str, Any]]) -> list[float | None]:
    """Labelled plausible height in cm carried forward (current row included), as the units layer."""
    a = REGISTRY["height"]
    out: list[float | None] = []
    last: float | None = None
    for r in records:
        v, u = _f32(r.get("height_value")), r.get("height_unit")
        if v is not None and u == "cm" and _in(v, a.units["cm"].plausible):
            last = v
        elif v is not None and u == "in" and _in(v, a.units["in"].plausible):
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


def instance_warnings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Warnings for one patient's validated yearly records (oldest first); empty when nothing changes."""
    out: list[dict[str, Any]] = []
    href: list[float | None] | None = None
    for a in REGISTRY.values():
        raw = [r.get(a.value_col) for r in records]
        if all(v is None for v in raw):
            continue
        vals = [_f32(v) for v in raw]
        units = [r.get(a.unit_col) for r in records]
        if a.name == "weight" and href is None:
            href = _height_reference(records)
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
