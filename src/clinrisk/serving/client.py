"""Small V1 client: wait for readiness, send a predict request, and build example requests from a raw
validated shard (used by the pipeline's smoke test and the benchmark)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from clinrisk.errors import ClinriskError, DataError
from clinrisk.serving.request import instances_from_raw


class ServingUnavailable(ClinriskError):
    """The server did not become ready in time (message names the URL and the last answer)."""


def model_url(base_url: str, model_name: str = "clinrisk") -> str:
    """``<base>/v1/models/<name>`` (readiness; append ``:predict`` to score)."""
    return f"{base_url.rstrip('/')}/v1/models/{model_name}"


def wait_ready(
    base_url: str, model_name: str = "clinrisk", timeout_s: float = 60.0, interval_s: float = 0.25
) -> dict[str, Any]:
    """Poll ``GET /v1/models/<name>`` until it answers 200 ``{"ready": true}``; returns that body."""
    url = model_url(base_url, model_name)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=5.0) as client:
        while True:
            try:
                r = client.get(url)
                if r.status_code == 200 and r.json().get("ready") is True:
                    return dict(r.json())
                last = f"HTTP {r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise ServingUnavailable(f"{url}: not ready after {timeout_s:.0f}s ({last})")
            time.sleep(interval_s)


def predict(
    base_url: str,
    instances: list[dict[str, Any]],
    model_name: str = "clinrisk",
    parameters: dict[str, Any] | None = None,
    client: httpx.Client | None = None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """POST ``{"instances": ...}`` to ``:predict``; a non-200 answer is a DataError quoting ``error``."""
    body: dict[str, Any] = {"instances": instances}
    if parameters:
        body["parameters"] = parameters
    url = model_url(base_url, model_name) + ":predict"
    own = client is None
    c = client or httpx.Client(timeout=timeout_s)
    try:
        r = c.post(url, json=body)
    finally:
        if own:
            c.close()
    if r.status_code != 200:
        try:
            err = r.json().get("error", r.text)
        except ValueError:
            err = r.text
        raise DataError(f"{url}: HTTP {r.status_code}: {err}")
    return dict(r.json())


def example_instances(shard: str | Path, window_years: int, n: int = 1) -> list[dict[str, Any]]:
    """Up to ``n`` V1 instances from a raw validated shard: each patient's full history, which reproduces
    the training features exactly (patients with a recorded diagnosis are skipped - they are not in the
    risk set)."""
    path = Path(shard)
    if not path.is_file():
        raise DataError(f"{path}: shard file not found")
    out = instances_from_raw(pl.read_parquet(path), window_years, n=n, full_history=True)
    if not out:
        raise DataError(f"{path}: no patient without a recorded diagnosis to build an example from")
    return out


def example_request(shard: str | Path, window_years: int, n: int = 1) -> dict[str, Any]:
    """``{"instances": [...]}`` built by :func:`example_instances`."""
    return {"instances": example_instances(shard, window_years, n)}
