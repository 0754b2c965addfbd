"""The request contract, case by case: every violation is a 400 naming the instance index and field."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest

from clinrisk.generator.schema import OBSERVED_SCHEMA
from clinrisk.serving.request import (
    InvalidRequest,
    UnsupportedMediaType,
    decode_body,
    instances_from_raw,
    validate_request,
)

WINDOW = 3
Mutation = Callable[[dict[str, Any]], None]


def _set(path: list[Any], value: Any) -> Mutation:
    def f(inst: dict[str, Any]) -> None:
        node: Any = inst
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value

    return f


def _del(path: list[Any]) -> Mutation:
    def f(inst: dict[str, Any]) -> None:
        node: Any = inst
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]

    return f


def _swap_years(inst: dict[str, Any]) -> None:
    h = inst["history"]
    h[-1]["year"], h[-2]["year"] = h[-2]["year"], h[-1]["year"]


def _dup_year(inst: dict[str, Any]) -> None:
    inst["history"][-1]["year"] = inst["history"][-2]["year"]


def _too_long(inst: dict[str, Any]) -> None:
    first = copy.deepcopy(inst["history"][0])
    first["year"] -= 1
    inst["history"].insert(0, first)


def _gap_window(inst: dict[str, Any]) -> None:
    inst["history"] = [inst["history"][0], inst["history"][-1]]
    inst["history"][0]["year"] = inst["history"][-1]["year"] - WINDOW - 1


CASES: list[tuple[str, Mutation, str, str]] = [
    # (case, mutation, reason, text that must appear in the message: the instance + field)
    ("missing static", _del(["sex"]), "missing_field", "instances[1].sex"),
    ("missing history", _del(["history"]), "missing_field", "instances[1].history"),
    ("missing yearly field", _del(["history", -1, "visits"]), "missing_field", "history[3].visits"),
    ("null required", _set(["history", 0, "insurance"], None), "missing_field", "history[0].insurance"),
    ("unknown field", _set(["hba1c"], 5.0), "unknown_field", "instances[1].hba1c"),
    ("unknown yearly field", _set(["history", 0, "hba1c"], 5.0), "unknown_field", "history[0].hba1c"),
    ("string for number", _set(["history", 1, "sbp_mmhg"], "120"), "wrong_type", "history[1].sbp_mmhg"),
    ("float for int", _set(["birth_year"], 1950.5), "wrong_type", "instances[1].birth_year"),
    ("bool for int", _set(["history", 0, "visits"], True), "wrong_type", "history[0].visits"),
    ("int for bool", _set(["family_history"], 1), "wrong_type", "instances[1].family_history"),
    ("history not list", _set(["history"], {"year": 2020}), "wrong_type", "instances[1].history"),
    ("record not object", _set(["history", 0], [1, 2]), "wrong_type", "history[0]"),
    ("NaN", _set(["history", 2, "sbp_mmhg"], math.nan), "non_finite", "history[2].sbp_mmhg"),
    ("inf", _set(["history", 2, "sbp_mmhg"], math.inf), "non_finite", "history[2].sbp_mmhg"),
    ("unknown unit", _set(["history", 0, "hba1c_unit"], "mg"), "unknown_unit", "history[0].hba1c_unit"),
    ("unknown level", _set(["sex"], "X"), "unknown_level", "instances[1].sex"),
    ("negative glucose", _set(["history", 0, "glucose_value"], -1.0), "impossible_value", "glucose_value"),
    ("4 m tall", _set(["history", 0, "height_value"], 400.0), "impossible_value", "history[0].height_value"),
    ("visits > 255", _set(["history", 0, "visits"], 300), "impossible_value", "history[0].visits"),
    ("born after year", _set(["birth_year"], 2090), "impossible_value", "instances[1]"),
    ("entry after year", _set(["entry_year"], 2099), "impossible_value", "instances[1].history[0].year"),
    ("out of order", _swap_years, "history_order", "instances[1].history[3].year"),
    ("duplicated year", _dup_year, "history_duplicate_year", "instances[1].history[3].year"),
    ("more than X+1 years", _too_long, "history_length", "instances[1].history"),
    ("outside window", _gap_window, "history_window", "instances[1].history[0].year"),
    ("empty history", _set(["history"], []), "history_length", "instances[1].history"),
    ("already diagnosed", _set(["history", 3, "dx_E11"], True), "already_diagnosed", "history[3].dx_E11"),
]


def _full(inst: dict[str, Any]) -> dict[str, Any]:
    """The instance with exactly X+1 records so indices in CASES are stable."""
    inst = copy.deepcopy(inst)
    h = inst["history"]
    while len(h) < WINDOW + 1:
        extra = copy.deepcopy(h[0])
        extra["year"] -= 1
        h.insert(0, extra)
    inst["history"] = h[-(WINDOW + 1) :]
    if inst["entry_year"] > inst["history"][0]["year"]:
        inst["entry_year"] = inst["history"][0]["year"]
    return inst


@pytest.mark.parametrize(("case", "mutate", "reason", "where"), CASES, ids=[c[0] for c in CASES])
def test_each_violation_is_rejected_with_instance_and_field(
    instances: list[dict[str, Any]], case: str, mutate: Mutation, reason: str, where: str
) -> None:
    good = [_full(instances[0]), _full(instances[1])]
    validate_request({"instances": good}, window_years=WINDOW, max_instances=10)  # baseline passes
    bad = copy.deepcopy(good)
    mutate(bad[1])
    with pytest.raises(InvalidRequest) as ei:
        validate_request({"instances": bad}, window_years=WINDOW, max_instances=10)
    assert ei.value.status == 400
    assert ei.value.reason == reason, str(ei.value)
    assert where in str(ei.value)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "wrong_type"),
        ({}, "missing_field"),
        ({"instances": {}}, "wrong_type"),
        ({"instances": []}, "instances_empty"),
        ({"instances": [1]}, "wrong_type"),
        ({"inputs": []}, "unknown_field"),
        ({"instances": [{}], "parameters": {"reason_codes_top_k": 99}}, "wrong_type"),
        ({"instances": [{}], "parameters": {"k": 1}}, "unknown_field"),
    ],
)
def test_body_level_violations(body: Any, reason: str) -> None:
    with pytest.raises(InvalidRequest) as ei:
        validate_request(body, window_years=WINDOW, max_instances=10)
    assert ei.value.reason == reason


def test_oversized_request_is_rejected(instance: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as ei:
        validate_request({"instances": [instance] * 11}, window_years=WINDOW, max_instances=10)
    assert ei.value.reason == "instances_too_many"
    assert "limit 10" in str(ei.value)


def test_messages_do_not_echo_patient_values(instance: dict[str, Any]) -> None:
    instance["history"][0]["height_value"] = 987.654
    with pytest.raises(InvalidRequest) as ei:
        validate_request({"instances": [instance]}, window_years=WINDOW, max_instances=10)
    assert "987" not in str(ei.value)


def test_valid_request_builds_raw_frame_with_contract_dtypes(instances: list[dict[str, Any]]) -> None:
    req = validate_request({"instances": instances[:3]}, window_years=WINDOW, max_instances=10)
    assert dict(req.frame.schema) == dict(OBSERVED_SCHEMA)
    assert req.frame["patient_id"].unique().sort().to_list() == [0, 1, 2]
    assert req.current_years == [i["history"][-1]["year"] for i in instances[:3]]
    assert req.frame.height == sum(len(i["history"]) for i in instances[:3])


def test_mixed_and_missing_units_are_accepted(instance: dict[str, Any]) -> None:
    rec = instance["history"][-1]
    rec.update(glucose_value=6.1, glucose_unit="mmol/L", hba1c_value=42.0, hba1c_unit="mmol/mol")
    rec.update(weight_value=80.0, weight_unit=None)
    validate_request({"instances": [instance]}, window_years=WINDOW, max_instances=10)


@pytest.mark.parametrize(
    "ct", ["text/plain", "application/octet-stream", "application/x-www-form-urlencoded", None]
)
def test_non_json_media_types_are_415(ct: str | None) -> None:
    headers = {"content-type": ct} if ct else {}
    with pytest.raises(UnsupportedMediaType) as ei:
        decode_body(b"{}", headers)
    assert ei.value.status == 415


def test_json_with_parameters_is_parsed_and_malformed_is_400() -> None:
    assert decode_body(b'{"instances": []}', {"content-type": "application/json; charset=utf-8"}) == {
        "instances": []
    }
    with pytest.raises(InvalidRequest) as ei:
        decode_body(b"{nope", {"content-type": "application/json; charset=utf-8"})
    assert ei.value.reason == "malformed_json"


def test_instances_from_raw_takes_last_window_and_skips_diagnosed(holdout_raw: pl.DataFrame) -> None:
    out = instances_from_raw(holdout_raw, WINDOW)
    assert 0 < len(out) < holdout_raw["patient_id"].n_unique()  # some patients are diagnosed
    for inst in out:
        years = [r["year"] for r in inst["history"]]
        assert years == sorted(years) and years[-1] - years[0] <= WINDOW
        assert not any(r.get("dx_E11") for r in inst["history"])


def test_longer_history_allowed_up_to_max_history_years(instances: list[dict[str, Any]]) -> None:
    """``serving.max_history_years`` lets a client send more than X+1 years (LOCF and "ever" features then
    see them, as in training); the count and the calendar span are both bounded."""
    inst = _full(instances[0])
    longer = copy.deepcopy(inst)
    for _ in range(3):
        extra = copy.deepcopy(longer["history"][0])
        extra["year"] -= 1
        longer["history"].insert(0, extra)
    longer["entry_year"] = min(longer["entry_year"], longer["history"][0]["year"])
    with pytest.raises(InvalidRequest, match=r"needs 1\.\.4 yearly records"):
        validate_request({"instances": [longer]}, window_years=WINDOW, max_instances=1)
    req = validate_request({"instances": [longer]}, window_years=WINDOW, max_instances=1, max_history_years=7)
    assert req.current_years == [longer["history"][-1]["year"]]
    assert len(req.columns["year"]) == WINDOW + 4
    with pytest.raises(InvalidRequest, match=r"needs 1\.\.6 yearly records") as ei:
        validate_request({"instances": [longer]}, window_years=WINDOW, max_instances=1, max_history_years=6)
    assert ei.value.reason == "history_length"
    sparse = copy.deepcopy(longer)
    sparse["history"] = [sparse["history"][0], sparse["history"][-1]]
    sparse["history"][0]["year"] = sparse["history"][-1]["year"] - 7
    sparse["entry_year"] = min(sparse["entry_year"], sparse["history"][0]["year"])
    sparse["birth_year"] = min(sparse["birth_year"], sparse["entry_year"])
    with pytest.raises(InvalidRequest, match="within the last 7 calendar years") as ei:
        validate_request({"instances": [sparse]}, window_years=WINDOW, max_instances=1, max_history_years=7)
    assert ei.value.reason == "history_window" and "instances[0].history[0].year" in str(ei.value)
