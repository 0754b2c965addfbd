"""A deliberately small second use case (two tables) used to prove the framework is use-case generic.

Accounts (static ``segment``) and monthly ``usage`` rows; an account converts in month t+1 with a known
probability driven by its usage in month t. Everything goes through the plugin interface only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandera.polars as pa
import polars as pl
from pydantic import BaseModel, Field

from clinrisk.errors import DataError
from clinrisk.feature_table import FeatureSpec
from clinrisk.serving.request import InvalidRequest
from clinrisk.splits import SPLIT_DTYPE, patient_bucket_expr
from clinrisk.usecases.base import (
    LabelDefinition,
    RawShard,
    ServingBatch,
    UseCase,
    UseCaseNames,
    ValidatedShard,
)

SEGMENTS = ["smb", "mid", "ent"]
MONTHS = 12


class ToyParams(BaseModel):
    model_config = {"extra": "forbid"}
    n_accounts: int = Field(400, ge=10)
    n_shards: int = Field(2, ge=1)


class ToySource:
    tables: tuple[str, ...] = ("accounts", "usage")

    def plan(self, cfg: Any) -> dict[str, Any]:
        p = ToyParams.model_validate(cfg.params)
        n = min(p.n_shards, p.n_accounts)
        bounds = [s * p.n_accounts // n for s in range(n + 1)]
        return {"n_shards": n, "bounds": bounds, "seed": cfg.run.seed}

    def generate_shard(self, cfg: Any, plan: Mapping[str, Any], shard: int) -> RawShard:
        lo, hi = plan["bounds"][shard], plan["bounds"][shard + 1]
        rng = np.random.default_rng([plan["seed"], shard])
        ids = np.arange(lo, hi, dtype=np.int64)
        seg = rng.integers(0, 3, ids.size)
        accounts = pl.DataFrame({"id": ids, "segment": [SEGMENTS[s] for s in seg]})
        rid = np.repeat(ids, MONTHS)
        month = np.tile(np.arange(MONTHS, dtype=np.int16), ids.size)
        actions = rng.poisson(3 + 2 * np.repeat(seg, MONTHS)).astype(np.int32)
        risk = 1 / (1 + np.exp(-(-3.0 + 0.25 * actions)))
        usage = pl.DataFrame({"id": rid, "month": month, "actions": actions})
        truth = usage.select("id", "month").with_columns(
            pl.Series("risk", risk.astype(np.float32)), pl.Series("converted", rng.random(risk.size) < risk)
        )
        return RawShard({"accounts": accounts, "usage": usage}, truth)

    def manifest(
        self, cfg: Any, plan: Mapping[str, Any], read_shard: Callable[[int], RawShard]
    ) -> dict[str, Any]:
        h = hashlib.sha256()
        rows, per = 0, []
        for s in range(plan["n_shards"]):
            raw = read_shard(s)
            n = sum(t.height for t in raw.tables.values())
            per.append(n)
            rows += n
            for name in self.tables:
                h.update(raw.tables[name].hash_rows().to_numpy().tobytes())
        return {
            "n_shards": plan["n_shards"],
            "rows": rows,
            "rows_per_shard": per,
            "observed_hash": h.hexdigest(),
        }

    def ingest(self, cfg: Any, source: Path) -> Mapping[str, pl.LazyFrame]:
        out = {}
        for name in self.tables:
            files = sorted((Path(source) / name).glob("*.parquet"))
            if not files:
                raise DataError(f"{Path(source) / name}: missing (expected {name}/*.parquet)")
            out[name] = pl.scan_parquet(files)
        return out

    def entity_column(self, table: str) -> str:
        return "id"


class ToySchema:
    def schemas(self, cfg: Any) -> Mapping[str, pa.DataFrameSchema]:
        return {
            "accounts": pa.DataFrameSchema({"id": pa.Column(pl.Int64), "segment": pa.Column(pl.String)}),
            "usage": pa.DataFrameSchema(
                {
                    "id": pa.Column(pl.Int64),
                    "month": pa.Column(pl.Int16),
                    "actions": pa.Column(pl.Int32, pa.Check.ge(0)),
                }
            ),
        }

    def validate(self, cfg: Any, raw: RawShard, shard: int) -> ValidatedShard:
        usage = raw.tables["usage"].with_row_index("_row")
        bad = usage.filter(pl.col("actions") < 0)
        q = bad.with_columns(
            pl.lit("ge_0").alias("_check"),
            pl.lit("actions").alias("_column"),
            pl.lit("negative count").alias("_reason"),
        )
        accounts = raw.tables["accounts"]
        qa = (
            accounts.clear()
            .with_row_index("_row")
            .with_columns(
                pl.lit("").alias("_check"), pl.lit("").alias("_column"), pl.lit("").alias("_reason")
            )
        )
        valid = usage.filter(pl.col("actions") >= 0).drop("_row")
        rows_in = accounts.height + usage.height
        return ValidatedShard(
            {"accounts": accounts, "usage": valid},
            {"accounts": qa, "usage": q},
            {"rows_in": rows_in},
        )


def _features(tables: Mapping[str, pl.LazyFrame], spec: FeatureSpec) -> pl.LazyFrame:
    seg = pl.Enum(spec.categories["segment"])
    return (
        tables["usage"]
        .join(tables["accounts"], on="id", how="left", maintain_order="left")
        .select(
            pl.col("id").alias("patient_id"),
            pl.col("month").cast(pl.Int16).alias("year"),
            pl.col("actions").cast(pl.Float32).alias("actions"),
            pl.col("segment").cast(seg).alias("segment"),
        )
    )


class ToyFeatures:
    def fit_spec(self, cfg: Any, train: Mapping[str, pl.LazyFrame]) -> FeatureSpec:
        return FeatureSpec(
            usecase="toy",
            feature_names=["actions", "segment"],
            dtypes={"actions": "Float32", "segment": "Enum"},
            categories={"segment": SEGMENTS},
            forbidden=["converted", "risk"],
        )

    def build(
        self, cfg: Any, tables: Mapping[str, pl.LazyFrame], spec: FeatureSpec, truth: pl.LazyFrame | None
    ) -> pl.LazyFrame:
        bucket = patient_bucket_expr("patient_id")
        split = (
            pl.when(bucket < 60)
            .then(pl.lit("train"))
            .when(bucket < 80)
            .then(pl.lit("validation"))
            .otherwise(pl.lit("test"))
        ).cast(SPLIT_DTYPE)
        lf = _features(tables, spec).with_columns(split.alias("split"))
        if truth is None:
            raise DataError("toy: labels come from the generator's truth table")
        t = truth.select(
            pl.col("id").alias("patient_id"),
            pl.col("month").alias("year"),
            pl.col("converted").cast(pl.Float32).alias("label"),
            pl.col("converted").cast(pl.Int8).alias("label_rec"),
            pl.lit(1.0, pl.Float32).alias("sample_weight"),
            pl.col("converted").cast(pl.Int8).alias("eval_label_true"),
            pl.col("risk").alias("eval_oracle_risk"),
        )
        cols = ["patient_id", "year", "split", *spec.feature_names, "label", "label_rec", "sample_weight"]
        return (
            lf.join(t, on=["patient_id", "year"])
            .select([*cols, "eval_label_true", "eval_oracle_risk"])
            .sort("patient_id", "year")
        )


class ToyServing:
    def example_instance(self) -> Mapping[str, Any]:
        return {"id": 1, "segment": "mid", "month": 3, "actions": 4}

    def parse(self, body: Any, spec: FeatureSpec, cfg: Any) -> ServingBatch:
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or not body["instances"]:
            raise InvalidRequest('body: expected {"instances": [...]}', reason="wrong_type")
        rows = []
        for i, inst in enumerate(body["instances"]):
            if not isinstance(inst, dict) or set(inst) != {"id", "segment", "month", "actions"}:
                raise InvalidRequest(
                    f"instances[{i}]: expected id, segment, month, actions", reason="wrong_type"
                )
            rows.append(inst)
        accounts = pl.DataFrame(
            {"id": [i for i, _ in enumerate(rows)], "segment": [r["segment"] for r in rows]},
            schema={"id": pl.Int64, "segment": pl.String},
        )
        usage = pl.DataFrame(
            {
                "id": list(range(len(rows))),
                "month": [r["month"] for r in rows],
                "actions": [r["actions"] for r in rows],
            },
            schema={"id": pl.Int64, "month": pl.Int16, "actions": pl.Int32},
        )
        return ServingBatch(
            {"accounts": accounts, "usage": usage}, [(i, r["month"]) for i, r in enumerate(rows)]
        )

    def features(self, batch: ServingBatch, spec: FeatureSpec) -> pl.DataFrame:
        tables = {k: v.lazy() for k, v in batch.tables.items()}
        return _features(tables, spec).collect().select(spec.feature_names)

    def instances(
        self, tables: Mapping[str, pl.DataFrame], keys: Sequence[tuple[int, int]]
    ) -> list[dict[str, Any]]:
        out = []
        for pid, month in keys:
            seg = tables["accounts"].filter(pl.col("id") == pid)["segment"][0]
            act = tables["usage"].filter((pl.col("id") == pid) & (pl.col("month") == month))["actions"][0]
            out.append({"id": int(pid), "segment": seg, "month": int(month), "actions": int(act)})
        return out


USECASE = UseCase(
    names=UseCaseNames(usecase="toy", namespace="toy", model_name="toy", experiment="toy"),
    description="A toy two-table conversion problem (tests only).",
    source=ToySource(),
    schema=ToySchema(),
    features=ToyFeatures(),
    labels=LabelDefinition(description="converts in month t", horizon="the same month", slices=("segment",)),
    serving=ToyServing(),
    configs={"default": "tests/usecases/toy.yaml", "tiny": "tests/usecases/toy.yaml"},
    config_model=ToyParams,
)
