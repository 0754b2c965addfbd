"""Request log: round trip, identifier stripping, bounded buffering, concurrent writers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clinrisk.errors import DataError
from clinrisk.request_log import RequestLogger, list_parts, read_request_log


def _frame(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "patient_id": np.arange(n, dtype=np.int64),
            "age": rng.integers(30, 80, n).astype(np.int16),
            "sex": pl.Series(rng.choice(["F", "M"], n), dtype=pl.Enum(["F", "M"])),
            "hba1c": rng.normal(5.7, 0.5, n).astype(np.float32),
            "eval_label_true": np.zeros(n, dtype=np.int8),
        }
    )


def test_round_trip_strips_identifiers(tmp_path: Path) -> None:
    df = _frame(10)
    p = np.linspace(0.01, 0.5, 10)
    ts = datetime(2025, 3, 1, 12, tzinfo=UTC)
    with RequestLogger(tmp_path / "log", flush_rows=1000) as lg:
        lg.log(df, p, "v1", timestamp=ts, request_ids=[f"r{i}" for i in range(10)])
        assert list(lg.root.glob("**/*.parquet")) == []  # buffered, not yet written
    out = read_request_log(tmp_path / "log")
    assert out.height == 10
    assert "patient_id" not in out.columns and "eval_label_true" not in out.columns
    assert out["model_version"].unique().to_list() == ["v1"]
    np.testing.assert_allclose(out["probability"].to_numpy(), p)
    assert out["sex"].dtype == pl.String and out["sex"].to_list() == df["sex"].cast(pl.String).to_list()
    assert out["request_id"].to_list()[:2] == ["r0", "r1"]
    assert out["timestamp"][0] == ts
    assert list_parts(tmp_path / "log")[0].parent.name == "date=2025-03-01"


def test_flushes_at_bound_and_filters(tmp_path: Path) -> None:
    lg = RequestLogger(tmp_path, flush_rows=25, feature_names=["age", "hba1c"])
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(6):
        lg.log(_frame(10, i), np.full(10, 0.1), "v1" if i < 3 else "v2", timestamp=t0 + timedelta(days=i))
    # 10-row batches, bound 25: a part is written after the 3rd and the 6th batch (30 rows each).
    assert len(lg.parts_written) == 2 and lg.rows_written == 60
    lg.log(_frame(4), np.full(4, 0.1), "v2", timestamp=t0 + timedelta(days=6))
    assert len(lg.parts_written) == 2
    lg.close()  # flushes the remainder
    assert len(lg.parts_written) == 3 and lg.rows_written == 64
    with pytest.raises(DataError, match="closed"):
        lg.log(_frame(1), [0.1], "v1")
    allrows = read_request_log(tmp_path)
    assert allrows.columns == ["timestamp", "model_version", "probability", "age", "hba1c"]
    assert read_request_log(tmp_path, model_version="v2").height == 34
    assert read_request_log(tmp_path, since=t0 + timedelta(days=4)).height == 24


def test_bad_input_is_named(tmp_path: Path) -> None:
    lg = RequestLogger(tmp_path)
    with pytest.raises(DataError, match="probabilities"):
        lg.log(_frame(3), [0.1, 0.2], "v1")
    with pytest.raises(DataError, match=r"\['bmi'\]"):
        RequestLogger(tmp_path, feature_names=["bmi"]).log(_frame(3), [0.1] * 3, "v1")
    with pytest.raises(DataError, match="no parts"):
        read_request_log(tmp_path)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    lg = RequestLogger(tmp_path, flush_rows=7)

    def work(k: int) -> None:
        for _ in range(20):
            lg.log(_frame(3, k), [0.2, 0.3, 0.4], f"v{k}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lg.close()
    out = read_request_log(tmp_path)
    assert out.height == 4 * 20 * 3
    assert not list(tmp_path.glob("**/.*.tmp"))
