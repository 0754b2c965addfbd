"""Row-wise evaluator of :func:`clinrisk.features.build_feature_frame` for small inputs (serving).

``build_feature_frame`` is the feature definition; training, evaluation and batch scoring run it. Its polars
query (~1000 expressions) costs ~20 ms to plan and ~30 ms to run whatever the input size, so a one-patient
request paid ~50 ms of CPU for a few hundred arithmetic operations. This module evaluates the same
definitions patient by patient in Python floats, with the same IEEE operations in the same order, and is
held to **bitwise** equality with the polars path:

- ``tests/features/test_rowwise_parity.py`` compares every feature of every row on generated populations
  (mixed, missing and flipped units, gaps between years, LOCF, roll-ups, unseen categories);
- the serving engine compares both paths on the built-in example and the bundle's serving examples at
  start-up and is not ready on any difference.

Null semantics follow polars: a null condition in ``when/then`` is false (Kleene logic); sums skip nulls;
mean/min/max of no values are null; the OLS slope needs >= 2 points and a positive denominator; forward
fill and cumulative max run within the patient. Raw floats enter as the schema's Float32, arithmetic is in
float64, and features are rounded to their dtype (Float32) at the end, exactly as the polars path casts.
The unit conversions are the registry's own functions (they are plain arithmetic on a float as well as on a
polars expression).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from clinrisk.errors import DataError
from clinrisk.features import CATEGORICAL_RAW, FLAGS, OTHER, ROLLED, FeatureSpec, feature_layout
from clinrisk.generator.schema import DX_COLUMNS, OBSERVED_SCHEMA
from clinrisk.units import (
    ANALYTES,
    BMI_PLAUSIBLE,
    CM_PER_IN,
    KG_PER_LB,
    M_PER_CM,
    REGISTRY,
    WEIGHT_CONSISTENCY_TOL,
    Analyte,
    UnitRule,
)

FLOAT_RAW: tuple[str, ...] = tuple(c for c, d in OBSERVED_SCHEMA.items() if str(d) == "Float32")
LIPIDS = ("ldl", "hdl", "tc", "tg")


def _in(v: float, rng: tuple[float, float]) -> bool:
    return rng[0] <= v <= rng[1]


def _to_canonical(rule: UnitRule, v: float) -> float:
    """The registry's conversion applied to a float (its functions are plain arithmetic)."""
    return float(cast(Any, rule.to_canonical)(v))


def _to_float32(values: Sequence[Any]) -> list[float | None]:
    """Python floats holding the Float32-rounded values (what the raw schema stores), None kept."""
    arr = np.array([math.nan if v is None else v for v in values], dtype=np.float32).astype(np.float64)
    return [None if v is None else float(x) for v, x in zip(values, arr.tolist(), strict=True)]


def _ffill(values: Sequence[Any]) -> list[Any]:
    out, last = [], None
    for v in values:
        if v is not None:
            last = v
        out.append(last)
    return out


def _labelled(
    a: Analyte, vals: list[float | None], units: list[str | None], other: str, factor: float
) -> list[float | None]:
    """Values whose unit label is the canonical one or ``other`` (times ``factor``) and plausible for that
    label; else None (the labelled references of the units layer's weight rules)."""
    rng, other_rng = a.units[a.canonical].plausible, a.units[other].plausible
    out: list[float | None] = []
    for v, u in zip(vals, units, strict=True):
        if v is not None and u == a.canonical and _in(v, rng):
            out.append(v)
        elif v is not None and u == other and _in(v, other_rng):
            out.append(v * factor)
        else:
            out.append(None)
    return out


def _height_reference_cm(hv: list[float | None], hu: list[str | None]) -> list[float | None]:
    """units._height_reference_cm: labelled plausible height in cm, carried forward (current row included)."""
    return _ffill(_labelled(REGISTRY["height"], hv, hu, "in", CM_PER_IN))


def _weight_reference_kg(a: Analyte, wv: list[float | None], wu: list[str | None]) -> list[float | None]:
    """units._weight_reference_kg: last labelled plausible weight (kg) strictly before this row."""
    return _ffill([None, *_labelled(a, wv, wu, "lb", KG_PER_LB)[:-1]])


def canonical_values(
    a: Analyte, vals: list[float | None], units: list[str | None], height_ref: list[float | None] | None
) -> list[float | None]:
    """units._resolution's canonical value for one patient's rows (sorted by year)."""
    rules = list(a.units.items())
    is_weight = a.name == "weight"
    wref = _weight_reference_kg(a, vals, units) if is_weight else None
    out: list[float | None] = []
    for i, (v, u) in enumerate(zip(vals, units, strict=True)):
        if v is None:
            out.append(None)
            continue
        fits = [_in(v, rule.plausible) for _, rule in rules]
        n_fit = sum(fits)
        if is_weight:
            assert height_ref is not None and wref is not None
            href = height_ref[i]
            if href is not None and u is not None:
                # polars' pow(2) is the correctly rounded square, x * x
                h2 = (href * M_PER_CM) * (href * M_PER_CM)
                as_kg, as_lb = _in(v / h2, BMI_PLAUSIBLE), _in(v * KG_PER_LB / h2, BMI_PLAUSIBLE)
                if (u == "kg" and not as_kg and as_lb) or (u == "lb" and not as_lb and as_kg):
                    out.append(None)
                    continue
        value: float | None = None
        done = False
        for (name, rule), fit in zip(rules, fits, strict=True):
            if u == name and fit:
                value, done = _to_canonical(rule, v), True
                break
        if not done and u is None and n_fit == 1:
            for (_, rule), fit in zip(rules, fits, strict=True):
                if fit:
                    value, done = _to_canonical(rule, v), True
                    break
        if not done and is_weight and u is None and n_fit > 1:
            assert height_ref is not None and wref is not None
            ref, href = wref[i], height_ref[i]
            kg, lb = v, v * KG_PER_LB
            near_kg = ref is not None and abs((kg / ref) - 1.0) <= WEIGHT_CONSISTENCY_TOL
            near_lb = ref is not None and abs((lb / ref) - 1.0) <= WEIGHT_CONSISTENCY_TOL
            bmi_kg = bmi_lb = False
            if href is not None:
                h_m = href * M_PER_CM
                bmi_kg = _in(kg / (h_m * h_m), BMI_PLAUSIBLE)
                bmi_lb = _in(lb / (h_m * h_m), BMI_PLAUSIBLE)
            if (near_kg and not near_lb) or (ref is None and bmi_kg and not bmi_lb):
                value = kg
            elif (near_lb and not near_kg) or (ref is None and bmi_lb and not bmi_kg):
                value = lb
        out.append(value)
    return out


def egfr_ckd_epi_2021(scr: float | None, age: int, female: bool) -> float | None:
    """features.egfr_ckd_epi_2021 on one value (null creatinine -> null)."""
    if scr is None:
        return None
    kappa = 0.7 if female else 0.9
    alpha = -0.241 if female else -0.302
    ratio = scr / kappa
    lo = math.pow(min(ratio, 1.0), alpha)
    hi = math.pow(max(ratio, 1.0), -1.200)
    sex_f = 1.012 if female else 1.0
    return 142.0 * lo * hi * math.pow(0.9938, float(age)) * sex_f


def _window(vals: list[float | None], xs: list[float], idx: list[int]) -> tuple[Any, ...]:
    """mean, min, max, slope, count over the rows ``idx`` (features.window_aggregates)."""
    pts: list[tuple[float, float]] = [(xs[j], v) for j in idx if (v := vals[j]) is not None]
    n_int = len(pts)
    if n_int == 0:
        return None, None, None, None, 0
    sy = 0.0
    sx = sxy = sxx = 0.0
    for x, v in pts:
        sy += v
        sx += x
        sxy += x * v
        sxx += x * x
    n = float(n_int)
    vs = [v for _, v in pts]
    den = n * sxx - sx * sx
    slope = (n * sxy - sx * sy) / den if (n >= 2 and den > 0) else None
    return sy / n, min(vs), max(vs), slope, n_int


class RowwiseFeatureBuilder:
    """Builds ``spec``'s features for each patient's rows (see module doc); output values are Python
    scalars in the polars path's dtypes: float (Float32-rounded), int, category string, or None."""

    def __init__(self, spec: FeatureSpec, names: Sequence[str] | None = None) -> None:
        """``names``: the features to return (default: all of the spec's, in spec order)."""
        self.spec = spec
        self.x = spec.window_years
        layout = feature_layout(spec.window_years, spec.locf)
        unknown = [n for n in spec.feature_names if n not in layout]
        if unknown:
            raise DataError(f"feature spec: features {unknown} cannot be built by this clinrisk version")
        self.names = list(spec.feature_names if names is None else names)
        outside = [n for n in self.names if n not in spec.feature_names]
        if outside:
            raise DataError(f"features {outside} are not in the feature spec")

    def patient_rows(
        self,
        cols: dict[str, list[Any]],
        lo: int,
        hi: int,
        last_only: bool,
        float32: dict[str, list[float | None]] | None = None,
    ) -> list[dict[str, Any]]:
        """Features of rows ``lo:hi`` of ``cols`` (one patient, sorted by year); the last row only if asked.
        ``float32``: the raw float columns of ``cols`` already rounded to Float32 (else done here)."""
        spec, x = self.spec, self.x
        m = hi - lo
        years = [int(y) for y in cols["year"][lo:hi]]
        if any(years[j] <= years[j - 1] for j in range(1, m)):
            raise DataError("features: rows of a patient must have strictly increasing years")
        raw = {
            c: (float32[c][lo:hi] if float32 is not None else _to_float32(cols[c][lo:hi])) for c in FLOAT_RAW
        }
        unit = {c: list(cols[c][lo:hi]) for c in cols if c.endswith("_unit")}
        hv, hu = raw["height_value"], unit["height_unit"]
        href = _height_reference_cm(hv, hu)
        canon: dict[str, list[float | None]] = {}
        for name in ANALYTES:
            a = REGISTRY[name]
            canon[name] = canonical_values(
                a, raw[a.value_col], unit[a.unit_col], href if name == "weight" else None
            )
        sex = cols["sex"][lo:hi]
        birth = cols["birth_year"][lo:hi]
        entry = cols["entry_year"][lo:hi]
        age = [years[j] - int(birth[j]) for j in range(m)]
        height_cm = _ffill(canon["height"])
        lab: dict[str, list[float | None]] = {
            k: canon[k] for k in ("hba1c", "glucose", "ldl", "hdl", "tc", "tg", "creatinine", "weight")
        }
        lab["sbp"] = raw["sbp_mmhg"]
        bmi: list[float | None] = []
        for j in range(m):
            w, h = lab["weight"][j], height_cm[j]
            bmi.append(None if w is None or h is None else w / ((h * M_PER_CM) * (h * M_PER_CM)))
        lab["bmi"] = bmi
        lab["egfr"] = [egfr_ckd_epi_2021(canon["creatinine"][j], age[j], sex[j] == "F") for j in range(m)]
        xs = [float(y) - 2000.0 for y in years]

        visits = cols["visits"][lo:hi]
        flags = {f: [bool(v) if v is not None else False for v in cols[f][lo:hi]] for f in FLAGS}
        family = cols["family_history"][lo:hi]
        targets = [m - 1] if last_only else list(range(m))
        out: list[dict[str, Any]] = []
        for t in targets:
            # gap-aware calendar window (year_t - X, year_t]
            idx = [j for j in range(t + 1) if years[j] > years[t] - x]
            row: dict[str, Any] = {
                "age": age[t],
                "history_years": years[t] - int(entry[t]),
                "family_history": None if family[t] is None else int(bool(family[t])),
                "height_cm": height_cm[t],
                "visits": visits[t],
                f"visits_sum_{x}y": min(max(sum(int(visits[j] or 0) for j in idx), 0), 255),
                f"glycaemic_tests_{x}y": sum(
                    1 for j in idx if lab["hba1c"][j] is not None or lab["glucose"][j] is not None
                ),
                f"lipid_tests_{x}y": sum(1 for j in idx if any(lab[k][j] is not None for k in LIPIDS)),
            }
            for name in ROLLED:
                vals = lab[name]
                mean, mn, mx, slope, cnt = _window(vals, xs, idx)
                last_j = next((j for j in range(t, -1, -1) if vals[j] is not None), None)
                years_since = None if last_j is None else years[t] - years[last_j]
                locf = None if last_j is None else vals[last_j]
                row[name] = vals[t]
                row[f"{name}_missing"] = int(vals[t] is None)
                row[f"{name}_mean_{x}y"] = mean
                row[f"{name}_min_{x}y"] = mn
                row[f"{name}_max_{x}y"] = mx
                row[f"{name}_slope_{x}y"] = slope
                row[f"{name}_n_{x}y"] = cnt
                row[f"{name}_last_{x}y"] = locf if (years_since is not None and years_since < x) else None
                if spec.locf:
                    row[f"{name}_locf"] = locf
                    row[f"{name}_years_since"] = years_since
            row["n_comorb"] = sum(int(flags[c][t]) for c in DX_COLUMNS)
            row["n_comorb_ever"] = sum(int(any(flags[c][: t + 1])) for c in DX_COLUMNS)
            for f in FLAGS:
                row[f] = int(flags[f][t])
                row[f"{f}_ever"] = int(any(flags[f][: t + 1]))
            for name in CATEGORICAL_RAW:
                if name in spec.categories:
                    row[name] = _category(cols[name][lo + t], spec.categories[name], spec.rollups.get(name))
            out.append({n: row[n] for n in self.names})
        return out

    def rows(self, cols: dict[str, list[Any]], last_only: bool = True) -> list[dict[str, Any]]:
        """Feature rows of every patient in ``cols`` (column lists sorted by patient_id, year), in patient
        order: each patient's last row, or all rows with ``last_only=False``."""
        pid = cols["patient_id"]
        float32 = {c: _to_float32(cols[c]) for c in FLOAT_RAW}  # one conversion per column, not per patient
        out: list[dict[str, Any]] = []
        lo = 0
        n = len(pid)
        while lo < n:
            hi = lo + 1
            while hi < n and pid[hi] == pid[lo]:
                hi += 1
            out.extend(self.patient_rows(cols, lo, hi, last_only, float32))
            lo = hi
        return out

    def matrix(
        self, rows: list[dict[str, Any]], names: Sequence[str], categories: dict[str, list[str]]
    ) -> np.ndarray:
        """Float32 (n, len(names)) model matrix, encoded exactly as ``bundle.features_to_matrix`` does:
        categories -> index of the level in ``categories`` (unseen -> __OTHER__), None -> NaN."""
        codes = {n: {lv: float(i) for i, lv in enumerate(categories[n])} for n in names if n in categories}
        other = {n: codes[n].get(OTHER, math.nan) for n in codes}
        data = []
        for r in rows:
            line = []
            for n in names:
                v = r[n]
                if v is None:
                    line.append(math.nan)
                elif n in codes:
                    line.append(codes[n].get(v, other[n]))
                else:
                    line.append(v)
            data.append(line)
        return np.asarray(data, dtype=np.float64).reshape(len(rows), len(names)).astype(np.float32)


def _category(value: Any, levels: list[str], rollup: int | None) -> str | None:
    """features.encode_categorical on one value."""
    if value is None:
        return None
    s = str(value)
    if rollup:
        s = s[:rollup]
    return s if (s in levels and s != OTHER) else OTHER
