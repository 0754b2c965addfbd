"""Serving fixtures: a real bundle trained by the real pipeline functions on small synthetic raw data
(contract-shaped patient-years -> fit_feature_spec -> features_lazy -> train_model), instances built from
other patients, an in-process KServe app and a real `clinrisk serve` process on 127.0.0.1."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from clinrisk.config import ServingConfig, load_config
from tests.features.synth import synthetic_raw

REPO = Path(__file__).resolve().parents[2]
WINDOW = 3
TRAIN_SETS = [
    "split.temporal=false",
    "train.num_boost_round=60",
    "train.learning_rate=0.1",
    "train.num_leaves=15",
    "train.min_data_in_leaf=20",
    "train.early_stopping_rounds=10",
]


def build_bundle(root: Path, n_patients: int = 800, seed: int = 11) -> Path:
    """Train a small bundle into ``root/bundle`` through the product's features and training code."""
    from clinrisk.features import features_lazy, fit_feature_spec
    from clinrisk.io import shard_file
    from clinrisk.train import train_model

    cfg = load_config(None, TRAIN_SETS)
    raw = synthetic_raw(n_patients, seed=seed)
    spec = fit_feature_spec(raw.lazy(), cfg)
    feats = features_lazy(raw.lazy(), spec, cfg, None).collect()
    fdir = root / "features"
    for s in range(2):
        f = shard_file(fdir, s)
        f.parent.mkdir(parents=True, exist_ok=True)
        feats.filter(pl.col("patient_id") % 2 == s).write_parquet(f)
    spec.to_json(fdir / "feature_spec.json")
    train_model(cfg, fdir, root / "bundle")
    return root / "bundle"


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="session")
def holdout_raw() -> pl.DataFrame:
    """Raw patient-years of patients the model never saw (ids disjoint from training)."""
    return synthetic_raw(120, seed=99, id_offset=100_000)


@pytest.fixture(scope="session")
def instances(holdout_raw: pl.DataFrame) -> list[dict[str, Any]]:
    from clinrisk.serving.request import instances_from_raw

    out = instances_from_raw(holdout_raw, WINDOW, n=40)
    assert len(out) >= 20
    return out


@pytest.fixture
def instance(instances: list[dict[str, Any]]) -> dict[str, Any]:
    """A deep copy of one valid instance (tests mutate it)."""
    return copy.deepcopy(instances[0])


@pytest.fixture(scope="session")
def make_client(bundle_dir: Path) -> Callable[..., Any]:
    """``make_client(load=True, token=None, **serving_overrides)`` -> TestClient on the served app."""
    from fastapi.testclient import TestClient

    from clinrisk.serving.predictor import ClinriskModel
    from clinrisk.serving.server import build_app

    def make(load: bool = True, token: bytes | None = None, **overrides: Any) -> TestClient:
        cfg = ServingConfig(**overrides)
        model = ClinriskModel(cfg.model_name, bundle_dir, cfg)
        if load:
            model.load()
        return TestClient(build_app(model, cfg, token))

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def live_server(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `clinrisk serve` process (kserve.ModelServer) on 127.0.0.1:<free port>; yields its URL."""
    from clinrisk.serving.client import wait_ready

    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [
        sys.executable, "-m", "clinrisk", "serve", "--bundle", str(bundle_dir),
        "--set", f"serving.http_port={port}", "--set", "serving.host=127.0.0.1",
    ]  # fmt: skip
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout_s=120)
    except Exception:
        proc.kill()
        raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}") from None
    yield url
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
