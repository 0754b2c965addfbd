"""The V1 request contract of the lead-conversion model: one instance = one company at one snapshot.

.. code-block:: json

    {"instances": [{
        "as_of": "2020-05-04",
        "ALEXA_RANK": 125000, "EMPLOYEE_RANGE": "26 to 50", "INDUSTRY": "Software",
        "usage": [{"WHEN_TIMESTAMP": "2020-04-27 00:00:00", "ACTIONS_CRM_CONTACTS": 12, ..., "USERS_EMAIL": 1}]
    }]}

``as_of`` is the snapshot day (the prediction is for conversion in ``(as_of, as_of + horizon_days]``);
``usage`` is the company's usage rows, every one stamped strictly before ``as_of`` (the training features
never see a row at or after their snapshot, so a later row is a client error, not something to drop
silently), with all eight counts as non-negative integers. Send the whole history: the lifetime features
(first usage, all-time actions) read all of it. Firmographics may be null or omitted; an optional ``ID`` is
echoed nowhere and ignored. Unknown fields are refused so a misspelt field never silently becomes null.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from clinrisk.serving.request import InvalidRequest
from clinrisk.usecases.leads.tables import (
    CONTRACTS,
    CUSTOMERS_FILE,
    EMPLOYEE_RANGES,
    NONCUSTOMERS_FILE,
    USAGE_COLUMNS,
    USAGE_FILE,
)

__all__ = [
    "EPOCH",
    "MAX_USAGE_ROWS",
    "ParsedLeads",
    "epoch_day",
    "from_epoch_day",
    "instance_for",
    "keys_of",
    "parse_instances",
]

EPOCH = dt.datetime(1970, 1, 1)
MAX_USAGE_ROWS = 2000  # ~38 years of weekly rows
MAX_COUNT = 10**12
_FIRMO = ("ALEXA_RANK", "EMPLOYEE_RANGE", "INDUSTRY")
_FIELDS = frozenset({"ID", "as_of", "usage", *_FIRMO})
_USAGE_FIELDS = frozenset({"WHEN_TIMESTAMP", *USAGE_COLUMNS})


def _bad(where: str, problem: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {problem}", reason=reason)


def _timestamp(where: str, value: Any, *, date_only: bool) -> dt.datetime:
    if not isinstance(value, str):
        raise _bad(where, "expected a date string", "wrong_type")
    formats = ("%Y-%m-%d",) if date_only else ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d")
    for f in formats:
        try:
            return dt.datetime.strptime(value, f)
        except ValueError:
            continue
    want = "YYYY-MM-DD" if date_only else "YYYY-MM-DD[ HH:MM:SS]"
    raise _bad(where, f"cannot read {value!r} as {want}", "wrong_type")


def _count(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(where, "expected an integer", "wrong_type")
    if not 0 <= value <= MAX_COUNT:
        raise _bad(where, f"outside [0, {MAX_COUNT}]", "impossible_value")
    return value


class ParsedLeads:
    """Validated instances as the export's tables (company ``ID`` = instance index) and their snapshots."""

    def __init__(
        self, companies: list[dict[str, Any]], usage: list[dict[str, Any]], as_of: list[dt.datetime]
    ):
        contract = CONTRACTS[NONCUSTOMERS_FILE]
        self.noncustomers = pl.DataFrame(
            companies,
            schema={
                "ID": pl.Int64,
                "ALEXA_RANK": pl.Int64,
                "EMPLOYEE_RANGE": pl.String,
                "INDUSTRY": pl.String,
            },
        ).cast(contract)  # type: ignore[arg-type]
        self.customers = pl.DataFrame(schema=CONTRACTS[CUSTOMERS_FILE])
        self.usage = pl.DataFrame(usage, schema=CONTRACTS[USAGE_FILE], orient="row")
        self.as_of = as_of

    def tables(self) -> dict[str, pl.DataFrame]:
        return {"customers": self.customers, "noncustomers": self.noncustomers, "usage_actions": self.usage}


def _instance(i: int, inst: Any, usage_rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dt.datetime]:
    where = f"instances[{i}]"
    if not isinstance(inst, dict):
        raise _bad(where, "expected an object", "wrong_type")
    unknown = sorted(set(inst) - _FIELDS)
    if unknown:
        raise _bad(where, f"unknown field(s) {unknown} (allowed: {sorted(_FIELDS)})", "unknown_field")
    if "as_of" not in inst:
        raise _bad(f"{where}.as_of", "required", "missing_field")
    as_of = _timestamp(f"{where}.as_of", inst["as_of"], date_only=True)
    company: dict[str, Any] = {"ID": i}
    rank = inst.get("ALEXA_RANK")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise _bad(f"{where}.ALEXA_RANK", "expected an integer >= 1 or null", "impossible_value")
    company["ALEXA_RANK"] = rank
    emp = inst.get("EMPLOYEE_RANGE")
    if emp is not None and emp not in EMPLOYEE_RANGES:
        raise _bad(
            f"{where}.EMPLOYEE_RANGE",
            f"unknown value {emp!r} (allowed: {', '.join(EMPLOYEE_RANGES)})",
            "unknown_level",
        )
    company["EMPLOYEE_RANGE"] = emp
    ind = inst.get("INDUSTRY")
    if ind is not None and (not isinstance(ind, str) or not 0 < len(ind) <= 200):
        raise _bad(f"{where}.INDUSTRY", "expected a string of 1..200 characters or null", "wrong_type")
    company["INDUSTRY"] = ind
    usage = inst.get("usage")
    if not isinstance(usage, list) or not usage:
        raise _bad(
            f"{where}.usage", "expected a non-empty list of usage rows stamped before as_of", "missing_field"
        )
    if len(usage) > MAX_USAGE_ROWS:
        raise _bad(f"{where}.usage", f"{len(usage)} rows > {MAX_USAGE_ROWS}", "too_large")
    seen: set[dt.datetime] = set()
    for j, row in enumerate(usage):
        w = f"{where}.usage[{j}]"
        if not isinstance(row, dict):
            raise _bad(w, "expected an object", "wrong_type")
        if set(row) != _USAGE_FIELDS:
            missing, extra = sorted(_USAGE_FIELDS - set(row)), sorted(set(row) - _USAGE_FIELDS)
            raise _bad(
                w,
                f"missing {missing} / unknown {extra}".replace("missing [] / ", "").replace(
                    " / unknown []", ""
                ),
                "missing_field",
            )
        ts = _timestamp(f"{w}.WHEN_TIMESTAMP", row["WHEN_TIMESTAMP"], date_only=False)
        if ts >= as_of:
            raise _bad(
                f"{w}.WHEN_TIMESTAMP",
                f"{row['WHEN_TIMESTAMP']} is not before as_of {inst['as_of']}",
                "future_usage",
            )
        if ts in seen:
            raise _bad(f"{w}.WHEN_TIMESTAMP", "two usage rows with the same timestamp", "duplicate")
        seen.add(ts)
        usage_rows.append(
            {"ID": i, "WHEN_TIMESTAMP": ts, **{c: _count(f"{w}.{c}", row[c]) for c in USAGE_COLUMNS}}
        )
    return company, as_of


def parse_instances(body: Any, max_instances: int) -> ParsedLeads:
    """Validate a decoded V1 body; raise :class:`InvalidRequest` naming the instance and field."""
    if not isinstance(body, dict) or "instances" not in body:
        raise _bad("body", 'expected {"instances": [...]}', "wrong_type")
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise _bad("instances", "expected a non-empty list", "wrong_type")
    if len(instances) > max_instances:
        raise _bad(
            "instances", f"{len(instances)} instances > serving.max_instances {max_instances}", "too_large"
        )
    companies: list[dict[str, Any]] = []
    usage: list[dict[str, Any]] = []
    as_of: list[dt.datetime] = []
    for i, inst in enumerate(instances):
        company, when = _instance(i, inst, usage)
        companies.append(company)
        as_of.append(when)
    return ParsedLeads(companies, usage, as_of)


def _json_ts(v: dt.datetime) -> str:
    return v.strftime("%Y-%m-%d %H:%M:%S")


def instance_for(company: Mapping[str, Any], usage: pl.DataFrame, as_of: dt.datetime) -> dict[str, Any]:
    """The V1 instance of ``company`` (a firmographics row) at ``as_of``: its usage strictly before it."""
    rows = usage.filter(pl.col("WHEN_TIMESTAMP") < as_of).sort("WHEN_TIMESTAMP")
    emp = company.get("EMPLOYEE_RANGE")
    return {
        "as_of": as_of.strftime("%Y-%m-%d"),
        "ALEXA_RANK": company.get("ALEXA_RANK"),
        "EMPLOYEE_RANGE": None if emp is None else str(emp),
        "INDUSTRY": company.get("INDUSTRY"),
        "usage": [
            {"WHEN_TIMESTAMP": _json_ts(r["WHEN_TIMESTAMP"]), **{c: int(r[c]) for c in USAGE_COLUMNS}}
            for r in rows.iter_rows(named=True)
        ],
    }


def epoch_day(when: dt.datetime) -> int:
    return (when - EPOCH).days


def from_epoch_day(day: int) -> dt.datetime:
    return EPOCH + dt.timedelta(days=int(day))


def keys_of(as_of: Sequence[dt.datetime]) -> list[tuple[int, int]]:
    return [(i, epoch_day(a)) for i, a in enumerate(as_of)]
