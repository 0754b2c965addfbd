"""Micro-batching: coalesced requests get exactly the answers they would get alone, errors stay with their
own request, and the batcher really coalesces (and never waits when idle)."""

from __future__ import annotations

import asyncio
import copy
import threading
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from clinrisk.config import ServingConfig
from clinrisk.serving.batching import MicroBatcher
from clinrisk.serving.inference import ServingEngine
from clinrisk.serving.request import OutOfDistribution, merge_requests, validate_request

WINDOW = 3


@pytest.fixture(scope="module")
def engine(bundle_dir: Path) -> ServingEngine:
    return ServingEngine.from_dir(bundle_dir, ServingConfig(reason_codes_top_k=2))


def _req(engine: ServingEngine, insts: list[dict[str, Any]]) -> Any:
    return engine.validate({"instances": insts})


def _far(inst: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(inst)
    for rec in out["history"]:
        rec.update(hba1c_value=16.0, hba1c_unit="%", glucose_value=590.0, glucose_unit="mg/dL")
    return out


def test_merge_requests_offsets_patient_ids(instances: list[dict[str, Any]]) -> None:
    a = validate_request({"instances": instances[:2]}, window_years=WINDOW, max_instances=10)
    b = validate_request({"instances": instances[2:5]}, window_years=WINDOW, max_instances=10)
    raw = merge_requests([a, b])
    assert raw.height == a.frame.height + b.frame.height
    assert raw["patient_id"].unique(maintain_order=True).to_list() == [0, 1, 2, 3, 4]
    assert raw.schema == a.frame.schema
    assert raw.filter(pl.col("patient_id") >= 2).drop("patient_id").equals(b.frame.drop("patient_id"))


def test_batched_scores_equal_scores_alone(engine: ServingEngine, instances: list[dict[str, Any]]) -> None:
    groups = [instances[0:1], instances[1:4], instances[4:5], instances[5:12]]
    alone = [engine.score_validated(_req(engine, g)) for g in groups]
    together = engine.score_many([_req(engine, g) for g in groups])
    for a, t in zip(alone, together, strict=True):
        assert not isinstance(t, Exception)
        assert t.probabilities == a.probabilities  # bit for bit, not approximately
        assert t.response == a.response


def test_out_of_distribution_rejection_stays_with_its_request(
    bundle_dir: Path, instances: list[dict[str, Any]]
) -> None:
    eng = ServingEngine.from_dir(bundle_dir, ServingConfig(reject_out_of_distribution=True))
    good, bad = _req(eng, instances[:2]), _req(eng, [instances[2], _far(instances[3])])
    out = eng.score_many([good, bad, good])
    assert isinstance(out[1], OutOfDistribution) and "instances[1]" in str(out[1])
    assert not isinstance(out[0], Exception) and not isinstance(out[2], Exception)
    assert out[0].probabilities == out[2].probabilities == eng.score_validated(good).probabilities


def test_batcher_coalesces_waiting_requests_and_routes_results() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def score_many(reqs: list[int]) -> list[Any]:
        gate.wait(5)  # hold the first batch until the others are queued
        calls.append(list(reqs))
        return [ValueError(f"bad {r}") if r == 3 else r * 10 for r in reqs]

    async def main() -> list[Any]:
        b: MicroBatcher[int, int] = MicroBatcher(score_many, size=lambda r: 1, max_instances=100)
        tasks = [asyncio.create_task(b.submit(0))]
        await asyncio.sleep(0.05)  # the idle batcher starts scoring 0 at once
        tasks += [asyncio.create_task(b.submit(r)) for r in range(1, 6)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    res = asyncio.run(main())
    assert calls == [[0], [1, 2, 3, 4, 5]]  # the first alone (no waiting), the rest in one batch
    assert res[:3] == [0, 10, 20] and res[4:] == [40, 50]
    assert isinstance(res[3], ValueError) and str(res[3]) == "bad 3"


def test_batcher_respects_the_instance_cap_and_fails_a_whole_failed_batch() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def score_many(reqs: list[int]) -> list[Any]:
        gate.wait(5)
        calls.append(list(reqs))
        if 99 in reqs:
            raise RuntimeError("scorer broke")
        return list(reqs)

    async def main() -> list[Any]:
        b: MicroBatcher[int, int] = MicroBatcher(score_many, size=lambda r: r, max_instances=5)
        tasks = [asyncio.create_task(b.submit(1))]
        await asyncio.sleep(0.05)
        tasks += [asyncio.create_task(b.submit(r)) for r in (3, 2, 2, 99, 1)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    res = asyncio.run(main())
    assert calls == [[1], [3, 2], [2], [99], [1]]  # sizes summed up to the cap; an oversized one alone
    assert res[:4] == [1, 3, 2, 2] and res[5] == 1
    assert isinstance(res[4], RuntimeError)


def test_concurrent_http_requests_get_their_own_answers(
    make_client: Any, instances: list[dict[str, Any]]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = "/v1/models/clinrisk:predict"
    groups = [instances[i : i + 1 + i % 3] for i in range(12)]
    with make_client(reason_codes_top_k=1) as client:  # one event loop for all requests, as in the server
        alone = [client.post(path, json={"instances": g}).json() for g in groups]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda g: client.post(path, json={"instances": g}).json(), groups))
    assert together == alone
    assert all(len(t["predictions"]) == len(g) for t, g in zip(together, groups, strict=True))
    assert np.all([0 < p["probability"] < 1 for t in together for p in t["predictions"]])
