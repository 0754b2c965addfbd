"""The V1 request contract: body decoding, strict instance validation and conversion to raw patient-years.

An instance is one patient: the static attributes plus ``history``, the yearly records of the last X+1
calendar years (oldest first, current year last) in the raw field names and units of the observed data
(docs/contracts.md). Every violation is a :class:`InvalidRequest` naming ``instances[i]`` and the field;
one bad instance rejects the whole request. Messages never echo numeric values (they are patient data and
KServe logs exception text); they name the field and the allowed range or levels instead.

JSON per RFC 8259 cannot carry NaN or infinity, so such bodies are malformed JSON (400); the non-finite
check below still guards programmatic callers that hand Python floats to :func:`validate_request`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import polars as pl

from clinrisk.errors import ClinriskError
from clinrisk.generator.schema import OBSERVED_SCHEMA
from clinrisk.schemas import HARD_RANGES, MAX_AGE_YEARS, NON_NULLABLE, HardRange

# ----------------------------------------------------------------------------------------------- errors


class ServingError(ClinriskError):
    """A request the server refuses; ``status`` is the HTTP status, ``reason`` the metrics label."""

    status: int = 400

    def __init__(self, message: str, reason: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        if status is not None:
            self.status = status


class UnsupportedMediaType(ServingError):
    """Content-Type is not JSON (415)."""

    status = 415


class InvalidRequest(ServingError):
    """Malformed JSON or a schema violation (400); the message names the instance and field."""

    status = 400


class OutOfDistribution(ServingError):
    """An instance outside the training distribution while rejection is configured (422)."""

    status = 422


# ------------------------------------------------------------------------------------------ the schema

STATIC_FIELDS: tuple[str, ...] = (
    "sex",
    "birth_year",
    "region",
    "site_id",
    "ethnicity",
    "entry_year",
    "family_history",
)
# Raw columns not sent by the client: the server numbers patients itself (no identifiers needed).
SERVER_FIELDS: tuple[str, ...] = ("patient_id",)
HISTORY_FIELDS: tuple[str, ...] = tuple(
    c for c in OBSERVED_SCHEMA if c not in STATIC_FIELDS and c not in SERVER_FIELDS
)
REQUIRED_HISTORY: frozenset[str] = frozenset(c for c in HISTORY_FIELDS if c in NON_NULLABLE)
INSTANCE_KEYS: frozenset[str] = frozenset((*STATIC_FIELDS, "history"))
TOP_LEVEL_KEYS: frozenset[str] = frozenset(("instances", "parameters"))
PARAMETER_KEYS: frozenset[str] = frozenset(("reason_codes_top_k",))
MAX_TOP_K = 50
MAX_CODE_CHARS = 32
YEAR_RANGE = (1900, 2100)

_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "Int16": (-(2**15), 2**15 - 1),
    "UInt8": (0, 255),
    "Int64": (-(2**63), 2**63 - 1),
}
_RANGES_BY_VALUE: dict[str, Any] = {vr.value_col: vr for vr in HARD_RANGES}
JSON_MEDIA_TYPES = frozenset(("application/json", "application/cloudevents+json", "application/ld+json"))


def _kind(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Enum):
        return "enum"
    if isinstance(dtype, pl.Categorical):
        return "code"
    if dtype == pl.Boolean:
        return "bool"
    if dtype == pl.Float32:
        return "float"
    return "int"


FIELD_KIND: dict[str, str] = {c: _kind(d) for c, d in OBSERVED_SCHEMA.items()}
ENUM_LEVELS: dict[str, list[str]] = {
    c: list(d.categories.to_list()) for c, d in OBSERVED_SCHEMA.items() if isinstance(d, pl.Enum)
}


# ------------------------------------------------------------------------------------------- decoding


def media_type(headers: Mapping[str, str] | None) -> str | None:
    """Lower-cased media type of the Content-Type header without parameters (None when absent)."""
    if not headers:
        return None
    raw = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    if raw is None:
        return None
    return raw.split(";", 1)[0].strip().lower() or None


def is_json_media_type(mt: str | None) -> bool:
    """application/json, the JSON types KServe knows, and any ``application/*+json``."""
    return mt is not None and (
        mt in JSON_MEDIA_TYPES or (mt.startswith("application/") and mt.endswith("+json"))
    )


def decode_body(body: Any, headers: Mapping[str, str] | None) -> Any:
    """Check the media type and return the decoded JSON document.

    KServe's dataplane decodes bodies whose Content-Type is *exactly* one of its JSON types (including
    ``application/octet-stream``) and hands every other body to the model as raw bytes. So: a non-JSON
    media type (or none) is a 415 whether or not KServe decoded it; JSON with parameters (``charset=...``)
    arrives as bytes and is parsed here with the same parser (orjson).
    """
    mt = media_type(headers)
    if not is_json_media_type(mt):
        raise UnsupportedMediaType(
            f"unsupported Content-Type {mt or '(none)'}: send application/json", reason="content_type"
        )
    if isinstance(body, bytes | bytearray | str):
        import orjson

        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"malformed JSON body: {exc}", reason="malformed_json") from None
    return body


# ----------------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidatedRequest:
    """A request that passed validation: the raw patient-years (as column lists, patient_id = instance
    index, rows sorted by (patient_id, year)) and per-request options."""

    columns: dict[str, list[Any]]
    n_instances: int
    current_years: list[int]
    reason_codes_top_k: int
    # Per instance: values the feature function drops or reads in an inferred unit (value_warnings).
    warnings: list[list[dict[str, Any]]] = dataclass_field(default_factory=list)

    @functools.cached_property
    def frame(self) -> pl.DataFrame:
        """The raw patient-years frame in OBSERVED_SCHEMA dtypes (built on first use)."""
        return records_frame(self.columns)


def merge_requests(reqs: list[ValidatedRequest]) -> pl.DataFrame:
    """One raw frame for several requests, patient ids offset so that every instance keeps its own id
    (request order, then instance order)."""
    if len(reqs) == 1:
        return reqs[0].frame
    return records_frame(merge_columns(reqs))


def merge_columns(reqs: list[ValidatedRequest]) -> dict[str, list[Any]]:
    """The column lists of several requests, patient ids offset as in :func:`merge_requests`."""
    if len(reqs) == 1:
        return reqs[0].columns
    merged: dict[str, list[Any]] = {c: [] for c in OBSERVED_SCHEMA}
    offset = 0
    for r in reqs:
        for c, values in r.columns.items():
            if c == "patient_id":
                merged[c].extend(i + offset for i in values)
            else:
                merged[c].extend(values)
        offset += r.n_instances
    return merged


def _bad(where: str, problem: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {problem}", reason=reason)


def _check_value(where: str, field: str, value: Any) -> Any:
    """Type- and range-check one non-null scalar; returns it normalised (int/float/str/bool)."""
    kind = FIELD_KIND[field]
    if kind == "bool":
        if not isinstance(value, bool):
            raise _bad(where, "expected true/false", "wrong_type")
        return value
    if kind == "enum":
        if not isinstance(value, str):
            raise _bad(where, "expected a string", "wrong_type")
        levels = ENUM_LEVELS[field]
        if value not in levels:
            reason = "unknown_unit" if field.endswith("_unit") else "unknown_level"
            what = "unit" if field.endswith("_unit") else "value"
            raise _bad(where, f"unknown {what} {value!r} (allowed: {', '.join(levels)})", reason)
        return value
    if kind == "code":
        if not isinstance(value, str):
            raise _bad(where, "expected a string", "wrong_type")
        if not value or len(value) > MAX_CODE_CHARS:
            raise _bad(where, f"code must have 1..{MAX_CODE_CHARS} characters", "impossible_value")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, "expected an integer", "wrong_type")
        lo, hi = _INT_BOUNDS[str(OBSERVED_SCHEMA[field])]
        if field in ("year", "birth_year", "entry_year"):
            lo, hi = YEAR_RANGE
        if not lo <= value <= hi:
            raise _bad(where, f"outside [{lo}, {hi}]", "impossible_value")
        return value
    # float
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(where, "expected a number", "wrong_type")
    if not math.isfinite(value):
        raise _bad(where, "NaN/infinity is not a value", "non_finite")
    return float(value)


def _check_measurement(where: str, record: dict[str, Any], value_col: str) -> None:
    """Value within the physically possible range of its labelled unit (the hull when unit is null)."""
    vr = _RANGES_BY_VALUE.get(value_col)
    v = record.get(value_col)
    if vr is None or v is None:
        return
    unit = record.get(vr.unit_col) if vr.unit_col else None
    rng: HardRange = (
        vr.ranges[unit]
        if unit is not None
        else (vr.hull() if vr.unit_col else next(iter(vr.ranges.values())))
    )
    low_ok = v > rng.lo if rng.lo_open else v >= rng.lo
    if not (low_ok and v <= rng.hi):
        label = f" for unit {unit}" if unit is not None else ""
        raise _bad(
            f"{where}.{value_col}", f"impossible value{label} (allowed {rng.text()})", "impossible_value"
        )


def _check_record(where: str, rec: Any) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise _bad(where, "expected an object (one yearly record)", "wrong_type")
    unknown = sorted(set(rec) - set(HISTORY_FIELDS))
    if unknown:
        raise _bad(f"{where}.{unknown[0]}", "unknown field", "unknown_field")
    out: dict[str, Any] = {}
    for field in HISTORY_FIELDS:
        value = rec.get(field)
        if value is None:
            if field in REQUIRED_HISTORY:
                raise _bad(f"{where}.{field}", "missing required field", "missing_field")
            out[field] = None
            continue
        out[field] = _check_value(f"{where}.{field}", field, value)
    for vr in HARD_RANGES:
        _check_measurement(where, out, vr.value_col)
    return out


def _check_instance(
    i: int, inst: Any, window_years: int, max_history_years: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    where = f"instances[{i}]"
    if not isinstance(inst, dict):
        raise _bad(where, "expected an object (one patient)", "wrong_type")
    unknown = sorted(set(inst) - INSTANCE_KEYS)
    if unknown:
        raise _bad(f"{where}.{unknown[0]}", "unknown field", "unknown_field")
    static: dict[str, Any] = {}
    for field in STATIC_FIELDS:
        if inst.get(field) is None:
            raise _bad(f"{where}.{field}", "missing required field", "missing_field")
        static[field] = _check_value(f"{where}.{field}", field, inst[field])
    hist = inst.get("history")
    if hist is None:
        raise _bad(f"{where}.history", "missing required field", "missing_field")
    if not isinstance(hist, list):
        raise _bad(f"{where}.history", "expected a list of yearly records", "wrong_type")
    max_len = max(max_history_years, window_years + 1)
    if not 1 <= len(hist) <= max_len:
        raise _bad(f"{where}.history", f"needs 1..{max_len} yearly records", "history_length")
    records = [_check_record(f"{where}.history[{j}]", r) for j, r in enumerate(hist)]
    years = [r["year"] for r in records]
    for j in range(1, len(years)):
        if years[j] == years[j - 1]:
            raise _bad(f"{where}.history[{j}].year", "duplicated year", "history_duplicate_year")
        if years[j] < years[j - 1]:
            raise _bad(
                f"{where}.history[{j}].year",
                "years out of order (oldest first, current last)",
                "history_order",
            )
    if years[-1] - years[0] >= max_len:
        raise _bad(
            f"{where}.history[0].year",
            f"too old: records must lie within the last {max_len} calendar years",
            "history_window",
        )
    # The window aggregates read the X years before the current one: a history that starts later than
    # max(entry_year, current - X) would silently leave them empty (docs/contracts.md, "Serving").
    window_start = max(static["entry_year"], years[-1] - window_years)
    if years[0] > window_start:
        raise _bad(
            f"{where}.history",
            f"too short: must reach back to year {window_start} (the last {window_years} years before the "
            "current one, or entry_year), the latest record on or before it included",
            "history_length",
        )
    if not static["birth_year"] <= static["entry_year"]:
        raise _bad(f"{where}.entry_year", "before birth_year", "impossible_value")
    for j, r in enumerate(records):
        if not 0 <= r["year"] - static["birth_year"] <= MAX_AGE_YEARS:
            raise _bad(
                f"{where}.history[{j}].year", f"age must be in [0, {MAX_AGE_YEARS}]", "impossible_value"
            )
        if r["year"] < static["entry_year"]:
            raise _bad(f"{where}.history[{j}].year", "before entry_year", "impossible_value")
        if r["dx_E11"]:
            # The model predicts *incident* T2D: a patient with a recorded diagnosis is not in the risk set.
            raise _bad(
                f"{where}.history[{j}].dx_E11",
                "patient already has a recorded type 2 diabetes diagnosis (not in the risk set)",
                "already_diagnosed",
            )
    return static, records


def _top_k(params: Any, default: int) -> int:
    if params is None:
        return default
    if not isinstance(params, dict):
        raise _bad("parameters", "expected an object", "wrong_type")
    unknown = sorted(set(params) - PARAMETER_KEYS)
    if unknown:
        raise _bad(f"parameters.{unknown[0]}", "unknown parameter", "unknown_field")
    k = params.get("reason_codes_top_k", default)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_TOP_K:
        raise _bad("parameters.reason_codes_top_k", f"expected an integer in [0, {MAX_TOP_K}]", "wrong_type")
    return k


def validate_request(
    payload: Any,
    *,
    window_years: int,
    max_instances: int,
    default_top_k: int = 0,
    max_history_years: int | None = None,
) -> ValidatedRequest:
    """Validate a decoded V1 body and build the raw patient-years frame (patient_id = instance index).

    An instance's history holds 1 to ``max_history_years`` yearly records (default X+1; never fewer than
    X+1 allowed). The window aggregates read the last X years; LOCF, years-since, "ever" flags and the
    carried height read every record sent, so the patient's full history reproduces the training
    features exactly, while X+1 years leave older values out."""
    if not isinstance(payload, dict):
        raise _bad("body", 'expected a JSON object {"instances": [...]}', "wrong_type")
    unknown = sorted(set(payload) - TOP_LEVEL_KEYS)
    if unknown:
        raise _bad(unknown[0], "unknown top-level field", "unknown_field")
    instances = payload.get("instances")
    if instances is None:
        raise _bad("instances", "missing required field", "missing_field")
    if not isinstance(instances, list):
        raise _bad("instances", "expected a list", "wrong_type")
    if not instances:
        raise _bad("instances", "empty: send at least one instance", "instances_empty")
    if len(instances) > max_instances:
        raise _bad(
            "instances", f"too many instances (limit {max_instances} per request)", "instances_too_many"
        )
    from clinrisk.serving.value_warnings import instance_warnings

    top_k = _top_k(payload.get("parameters"), default_top_k)
    columns: dict[str, list[Any]] = {c: [] for c in OBSERVED_SCHEMA}
    current: list[int] = []
    warnings: list[list[dict[str, Any]]] = []
    for i, inst in enumerate(instances):
        static, records = _check_instance(i, inst, window_years, max_history_years or window_years + 1)
        current.append(records[-1]["year"])
        warnings.append(instance_warnings(records))
        for r in records:
            columns["patient_id"].append(i)
            for f in STATIC_FIELDS:
                columns[f].append(static[f])
            for f in HISTORY_FIELDS:
                columns[f].append(r[f])
    return ValidatedRequest(
        columns=columns,
        n_instances=len(instances),
        current_years=current,
        reason_codes_top_k=top_k,
        warnings=warnings,
    )


def records_frame(columns: dict[str, list[Any]]) -> pl.DataFrame:
    """Column lists -> a frame with exactly the observed raw dtypes.

    Each column is built directly in its dtype (Enum levels were checked by validation): no frame-wide
    cast, which would plan and run a lazy query per request."""
    return pl.DataFrame([pl.Series(k, columns[k], dtype=d) for k, d in OBSERVED_SCHEMA.items()])


# ------------------------------------------------------------------------------------- building requests


def _json_scalar(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def instance_from_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One patient's raw rows (oldest first) -> a V1 instance (static from the last row)."""
    if not rows:
        raise InvalidRequest("history: no rows for this patient", reason="history_length")
    last = rows[-1]
    inst: dict[str, Any] = {f: _json_scalar(last[f]) for f in STATIC_FIELDS}
    inst["history"] = [
        {f: _json_scalar(r.get(f)) for f in HISTORY_FIELDS if r.get(f) is not None} for r in rows
    ]
    return inst


def instances_from_raw(
    raw: pl.DataFrame, window_years: int, n: int | None = None, full_history: bool = False
) -> list[dict[str, Any]]:
    """V1 instances from validated raw rows: per patient the records from the latest one on or before
    the window start (current year - X) to the current year (or, with ``full_history``, every year).

    Patients whose history holds a recorded diagnosis (dx_E11) are skipped: they are not in the risk set.
    Patients appear in ``patient_id`` order; ``n`` caps how many are returned.
    """
    df = raw.select([c for c in OBSERVED_SCHEMA if c in raw.columns]).sort("patient_id", "year")
    last = df.group_by("patient_id", maintain_order=True).agg(pl.col("year").max().alias("_t"))
    df = df.join(last, on="patient_id", maintain_order="left")
    if not full_history:
        # From the latest record on or before the window start (the contract's minimum; a gap year there
        # takes the record before it).
        start = pl.col("year").filter(pl.col("year") <= pl.col("_t") - window_years).max().over("patient_id")
        df = df.filter(pl.col("year") >= start.fill_null(pl.col("year").min().over("patient_id")))
    ok = df.group_by("patient_id", maintain_order=True).agg((~pl.col("dx_E11").any()).alias("_ok"))
    df = df.join(ok, on="patient_id", maintain_order="left").filter(pl.col("_ok")).drop("_t", "_ok")
    out: list[dict[str, Any]] = []
    for part in df.partition_by("patient_id", maintain_order=True):
        out.append(instance_from_rows(part.to_dicts()))
        if n is not None and len(out) >= n:
            break
    return out
