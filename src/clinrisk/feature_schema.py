"""Pandera (polars backend) schema of a features frame, built from the feature spec.

The schema is strict: exactly the id columns, ``spec.feature_names``, the label columns and (optionally)
the ``eval_*`` columns. Value ranges come from the units registry (canonical plausible range) and from
each feature family (counts within the window, flags 0/1, ages). ``feature_schema_dict`` is the JSON
serialisation written as ``feature_schema.json``.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from clinrisk.errors import DataError
from clinrisk.features import ROLLED, FeatureSpec, check_feature_names
from clinrisk.labels import EVAL_COLUMNS
from clinrisk.splits import SPLIT_DTYPE
from clinrisk.units import REGISTRY, convert_value


def _canonical_range(analyte: str) -> tuple[float, float]:
    """Union of every unit's plausible range, expressed in the canonical unit (a plausible lb weight
    can be just under the kg range's lower bound)."""
    a = REGISTRY[analyte]
    ends = [convert_value(analyte, b, u, a.canonical) for u, r in a.units.items() for b in r.plausible]
    return min(ends), max(ends)


# Canonical-unit value ranges of the rolled families (derived ones are physiological bounds).
VALUE_RANGES: dict[str, tuple[float, float]] = {
    **{a: _canonical_range(a) for a in REGISTRY},
    "egfr": (1.0, 250.0),
    "sbp": (40.0, 300.0),
    "bmi": (5.0, 200.0),
}
VALUE_RANGES["height_cm"] = VALUE_RANGES.pop("height")
# Wide guard on slopes (units per year) so a corrupt unit conversion still fails loudly.
SLOPE_ABS_MAX = {lab: (VALUE_RANGES[lab][1] - VALUE_RANGES[lab][0]) for lab in ROLLED}


def _feature_rule(name: str, spec: FeatureSpec) -> tuple[float | None, float | None, list[Any] | None]:
    """(min, max, allowed values) for a feature from its family."""
    x = spec.window_years
    dtype = spec.dtypes[name]
    if dtype == "Enum":
        return None, None, None
    if name in ("age",):
        return 0, 130, None
    if name == "history_years":
        return -1, 130, None
    if dtype == "Int8":
        return None, None, [0, 1]
    if name.endswith("_years_since"):
        return 0, 200, None
    if name in (f"glycaemic_tests_{x}y", f"lipid_tests_{x}y") or name.endswith(f"_n_{x}y"):
        return 0, x, None
    if dtype == "UInt8":
        return 0, 255, None
    if name in VALUE_RANGES:
        return (*VALUE_RANGES[name], None)
    for lab in ROLLED:
        if name.startswith(f"{lab}_"):
            if "_slope_" in name:
                return -SLOPE_ABS_MAX[lab], SLOPE_ABS_MAX[lab], None
            return (*VALUE_RANGES[lab], None)
        if name == lab:
            return (*VALUE_RANGES[lab], None)
    return None, None, None


def _column_specs(spec: FeatureSpec, with_eval: bool) -> dict[str, dict[str, Any]]:
    cols: dict[str, dict[str, Any]] = {
        "patient_id": {"dtype": pl.Int64(), "nullable": False},
        "year": {"dtype": pl.Int16(), "nullable": False, "min": 1900, "max": 2200},
        "split": {"dtype": SPLIT_DTYPE, "nullable": False},
    }
    for n in spec.feature_names:
        lo, hi, isin = _feature_rule(n, spec)
        cols[n] = {"dtype": spec.polars_dtype(n), "nullable": True, "min": lo, "max": hi, "isin": isin}
    cols["label"] = {"dtype": pl.Float32(), "nullable": False, "min": 0.0, "max": 1.0}
    cols["label_rec"] = {"dtype": pl.Int8(), "nullable": False, "isin": [0, 1]}
    cols["sample_weight"] = {"dtype": pl.Float32(), "nullable": False, "min": 0.0, "max": 1e6}
    if with_eval:
        cols["eval_label_true"] = {"dtype": pl.Int8(), "nullable": True, "isin": [0, 1]}
        cols["eval_oracle_risk"] = {"dtype": pl.Float32(), "nullable": True, "min": 0.0, "max": 1.0}
        cols["eval_onset_year"] = {"dtype": pl.Int16(), "nullable": True}
        cols["eval_recorded_year"] = {"dtype": pl.Int16(), "nullable": True}
        cols["eval_undiagnosed"] = {"dtype": pl.Int8(), "nullable": True, "isin": [0, 1]}
    return cols


def column_rules(spec: FeatureSpec, *, with_eval: bool) -> dict[str, dict[str, Any]]:
    """Per column of a features frame: dtype, nullable and the min/max/isin rule (the schema's content)."""
    return _column_specs(spec, with_eval)


def build_feature_schema(spec: FeatureSpec, *, with_eval: bool = False) -> Any:
    """Strict pandera DataFrameSchema for a features frame (eval_* columns when ``with_eval``)."""
    import pandera.polars as pa

    check_feature_names(spec.feature_names)
    columns = {}
    for name, c in _column_specs(spec, with_eval).items():
        checks = []
        if c.get("isin") is not None:
            checks.append(pa.Check.isin(c["isin"]))
        if c.get("min") is not None and c.get("max") is not None:
            checks.append(pa.Check.in_range(c["min"], c["max"]))
        if isinstance(c["dtype"], pl.Float32):
            checks.append(
                pa.Check(lambda d: d.lazyframe.select(pl.col(d.key).is_nan().not_()), name="not_nan")
            )
        columns[name] = pa.Column(c["dtype"], checks=checks, nullable=c["nullable"], required=True)
    return pa.DataFrameSchema(columns, strict=True, ordered=False, name="clinrisk_features")


def _violations(name: str, rule: dict[str, Any]) -> pl.Expr:
    """True where a value breaks one of the column's schema checks (null in range/isin checks = pass)."""
    col = pl.col(name)
    bad = pl.lit(False)
    if not rule["nullable"]:
        bad = bad | col.is_null()
    if rule.get("isin") is not None:
        bad = bad | ~col.is_in(rule["isin"])
    if rule.get("min") is not None and rule.get("max") is not None:
        bad = bad | (col < rule["min"]) | (col > rule["max"])
    if rule["dtype"].is_float():
        bad = bad | col.is_nan()
    return bad.fill_null(False).any().alias(name)


def passes_all_rules(df: pl.DataFrame, rules: dict[str, dict[str, Any]]) -> bool:
    """Every rule of the schema in one polars pass: True only if pandera would accept the frame.

    pandera's polars backend runs one query per check (≈ 3 per column × ~170 columns), which cost as much
    as building the features; the common case (a good frame) needs only this single pass. Any doubt
    (a wrong column set or dtype, or any value breaking a rule) returns False and pandera decides and
    writes the message, so the outcome and the error text stay pandera's.
    """
    if set(df.columns) != set(rules):
        return False
    if any(df.schema[name] != rule["dtype"] for name, rule in rules.items()):
        return False
    if df.height == 0:
        return True
    return not any(df.select([_violations(n, r) for n, r in rules.items()]).row(0))


def validate_features(df: pl.DataFrame, spec: FeatureSpec, *, where: str = "features") -> pl.DataFrame:
    """Validate a features frame (all errors collected); raise DataError naming columns and checks."""
    with_eval = any(c.startswith("eval_") for c in df.columns)
    extra_eval = [c for c in df.columns if c.startswith("eval_") and c not in EVAL_COLUMNS]
    if extra_eval:
        raise DataError(f"{where}: unknown evaluation columns {extra_eval}")
    if passes_all_rules(df, _column_specs(spec, with_eval)):
        return df
    # pandera only when the one-pass check found something: its import (~0.8 s) is then worth paying.
    import pandera.errors as pe

    schema = build_feature_schema(spec, with_eval=with_eval)
    try:
        return schema.validate(df, lazy=True)
    except pe.SchemaErrors as exc:
        fc = exc.failure_cases
        rows = (
            fc.select(
                pl.col("column").cast(pl.String),
                pl.col("check").cast(pl.String),
                pl.col("failure_case").cast(pl.String),
            )
            .unique(subset=["column", "check"], keep="first", maintain_order=True)
            .head(20)
            .rows()
        )
        summary = "; ".join(f"{c} {chk} (e.g. {case})" for c, chk, case in rows)
        raise DataError(f"{where}: feature schema violations: {summary}") from None
    except pe.SchemaError as exc:
        raise DataError(f"{where}: feature schema violation: {exc}") from None


def feature_schema_dict(spec: FeatureSpec, *, with_eval: bool = True) -> dict[str, Any]:
    """JSON-able description of the schema (feature_schema.json)."""
    cols = {}
    for name, c in _column_specs(spec, with_eval).items():
        cols[name] = {
            "dtype": str(c["dtype"]),
            "nullable": c["nullable"],
            **({"min": c["min"], "max": c["max"]} if c.get("min") is not None else {}),
            **({"isin": c["isin"]} if c.get("isin") is not None else {}),
        }
    return {"name": "clinrisk_features", "strict": True, "spec_version": spec.spec_version, "columns": cols}
