"""The lead-conversion use case as a plugin of ``clinrisk.usecases.base``: which free-tier companies
convert to paying within N days of a snapshot.

Tables are the export's three files by stem (``customers``, ``noncustomers``, ``usage_actions``); the entity
is the company ``ID`` in all three, so a shard holds whole companies (the cross-file rules — an ID in both
company files, usage of an unknown company — hold per shard). The feature table's keys: ``patient_id`` is
the company ID, ``year`` is the snapshot as days since 1970-01-01 (so a key alone names the snapshot).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from clinrisk.errors import DataError
from clinrisk.feature_table import FeatureSpec
from clinrisk.usecases.base import LabelDefinition, RawShard, ServingBatch, ValidatedShard
from clinrisk.usecases.leads import features as F
from clinrisk.usecases.leads.config import LeadsParams
from clinrisk.usecases.leads.generator import simulate
from clinrisk.usecases.leads.ingest import cast_file, read_csv_text, validate_tables
from clinrisk.usecases.leads.request import from_epoch_day, instance_for, keys_of, parse_instances
from clinrisk.usecases.leads.schemas import company_rules, file_schema, usage_rules
from clinrisk.usecases.leads.splits import assign_split, first_test_snapshot, in_buckets
from clinrisk.usecases.leads.tables import CUSTOMERS_FILE, NONCUSTOMERS_FILE, USAGE_FILE
from clinrisk.usecases.leads.truth import snapshot_truth

if TYPE_CHECKING:
    import pandera.polars as pa

    from clinrisk.config import ClinriskConfig, ServingConfig

__all__ = [
    "LABELS",
    "NAME",
    "TABLES",
    "LeadsFeatures",
    "LeadsSchema",
    "LeadsServing",
    "LeadsSource",
    "params",
]

NAME = "leads"
FILE_OF = {"customers": CUSTOMERS_FILE, "noncustomers": NONCUSTOMERS_FILE, "usage_actions": USAGE_FILE}
TABLES = tuple(FILE_OF)
# raw columns that must never be model inputs: the outcome itself and what only paying customers have
FORBIDDEN = ("CLOSEDATE", "MRR", "LABEL", "P_TRUE", "SNAPSHOT", "ID")
SLICES = ("INDUSTRY_GROUP", "EMPLOYEE_RANGE")


def params(cfg: ClinriskConfig) -> LeadsParams:
    return LeadsParams.model_validate(cfg.params)


def _frames(tables: Mapping[str, Any]) -> dict[str, pl.DataFrame]:
    out = {}
    for t in TABLES:
        if t not in tables:
            raise DataError(f"leads data: table {t!r} missing (got {sorted(tables)})")
        v = tables[t]
        out[t] = v.collect() if isinstance(v, pl.LazyFrame) else v
    return out


# ---------------------------------------------------------------------------------------------- source


class LeadsSource:
    """The synthetic generator (companies in blocks of ``generate.companies_per_shard``) and real exports."""

    tables: tuple[str, ...] = TABLES

    def plan(self, cfg: ClinriskConfig) -> dict[str, Any]:
        g = params(cfg).generate
        n_shards = math.ceil(g.n_companies / g.companies_per_shard)
        blocks = [
            [
                1 + s * g.companies_per_shard,
                min(g.companies_per_shard, g.n_companies - s * g.companies_per_shard),
            ]
            for s in range(n_shards)
        ]
        return {"n_shards": n_shards, "blocks": blocks, "seed": cfg.run.seed}

    def generate_shard(self, cfg: ClinriskConfig, plan: Mapping[str, Any], shard: int) -> RawShard:
        first_id, n = plan["blocks"][shard]
        data = simulate(
            params(cfg).generate, int(plan["seed"]), shard=shard, n_companies=n, first_id=first_id
        )
        tables = {"customers": data.customers, "noncustomers": data.noncustomers, "usage_actions": data.usage}
        return RawShard(tables, data.hazard)

    def manifest(
        self, cfg: ClinriskConfig, plan: Mapping[str, Any], read_shard: Callable[[int], RawShard]
    ) -> dict[str, Any]:
        h = hashlib.sha256()
        rows_per_shard, by_table = [], dict.fromkeys(TABLES, 0)
        for s in range(plan["n_shards"]):
            raw = read_shard(s)
            rows_per_shard.append(sum(t.height for t in raw.tables.values()))
            for name in TABLES:
                table = raw.tables[name]
                by_table[name] += table.height
                h.update(table.write_csv().encode())  # text: stable across polars versions
        companies = by_table["customers"] + by_table["noncustomers"]
        return {
            "n_shards": plan["n_shards"],
            "rows": sum(rows_per_shard),
            "rows_per_shard": rows_per_shard,
            "rows_by_table": by_table,
            "observed_hash": h.hexdigest(),
            "prevalence": by_table["customers"] / companies if companies else None,
        }

    def ingest(self, cfg: ClinriskConfig, source: Path) -> Mapping[str, pl.LazyFrame]:
        """A folder with ``customers.csv``, ``noncustomers.csv`` and ``usage_actions.csv`` (the export), or
        with one ``<table>/`` folder of Parquet files per table. File-level problems (unreadable file, missing
        column, a column none of whose values parse) raise here, naming the file and line."""
        source = Path(source)
        if not source.is_dir():
            raise DataError(f"{source}: export folder not found (missing)")
        out: dict[str, pl.LazyFrame] = {}
        for table, file in FILE_OF.items():
            csv, folder = source / file, source / table
            if csv.is_file():
                text = read_csv_text(csv)
                cast_file(file, text)  # file-level checks only; rows are validated per shard
                out[table] = text.lazy()
            elif folder.is_dir() and any(folder.glob("*.parquet")):
                out[table] = pl.scan_parquet(sorted(folder.glob("*.parquet")))
            else:
                raise DataError(f"{csv}: file not found (missing)")
        if out["usage_actions"].select(pl.len()).collect().item() == 0:
            raise DataError(f"{source / USAGE_FILE}: no data rows")
        n_companies = sum(out[t].select(pl.len()).collect().item() for t in ("customers", "noncustomers"))
        if n_companies == 0:
            raise DataError(f"{source}: {CUSTOMERS_FILE} and {NONCUSTOMERS_FILE} have no data rows")
        return out

    def entity_column(self, table: str) -> str:
        return "ID"


# ---------------------------------------------------------------------------------------------- schema


class LeadsSchema:
    """Pandera schemas of the three files; validation quarantines rows with reasons (``ingest``)."""

    def schemas(self, cfg: ClinriskConfig) -> Mapping[str, pa.DataFrameSchema]:
        none = pl.Series([], dtype=pl.Int64)
        return {
            "customers": file_schema(CUSTOMERS_FILE, company_rules(CUSTOMERS_FILE, none)),
            "noncustomers": file_schema(NONCUSTOMERS_FILE, company_rules(NONCUSTOMERS_FILE, none)),
            "usage_actions": file_schema(USAGE_FILE, usage_rules(none)),
        }

    def validate(self, cfg: ClinriskConfig, raw: RawShard, shard: int) -> ValidatedShard:
        frames = _frames(raw.tables)
        res = validate_tables(
            {FILE_OF[t]: f for t, f in frames.items()}, params(cfg).source.max_quarantine_fraction
        )
        valid = {"customers": res.customers, "noncustomers": res.noncustomers, "usage_actions": res.usage}
        quarantine = {t: res.results[FILE_OF[t]].quarantine for t in TABLES}
        per_file = res.report()
        stats: dict[str, Any] = {
            k: sum(s[k] for s in per_file.values()) for k in ("rows_in", "rows_valid", "rows_quarantined")
        }
        stats["by_file"] = per_file
        return ValidatedShard(valid, quarantine, stats)


# -------------------------------------------------------------------------------------------- features


def _leads_spec(spec: FeatureSpec) -> F.LeadsFeatureSpec:
    return F.LeadsFeatureSpec.model_validate(spec.params["leads"])


def _feature_spec(lspec: F.LeadsFeatureSpec) -> FeatureSpec:
    dtypes = F.feature_dtypes(lspec)
    spec = FeatureSpec(
        usecase=NAME,
        feature_names=F.feature_names(lspec),
        dtypes={n: ("Enum" if isinstance(d, pl.Enum) else str(d)) for n, d in dtypes.items()},
        categories={"INDUSTRY_GROUP": F.industry_levels(lspec)},
        units={
            n: ("days" if n.startswith("DAYS_") else "count")
            for n in dtypes
            if n.endswith("D") or n.startswith("DAYS_")
        },
        forbidden=list(FORBIDDEN),
        params={"leads": lspec.model_dump(mode="json")},
    )
    spec.check()
    return spec


def feature_table(
    cfg: ClinriskConfig, tables: Mapping[str, pl.DataFrame], spec: FeatureSpec, truth: pl.LazyFrame | None
) -> pl.DataFrame:
    """Prediction rows on the config's snapshot grid, labels, split, features and (with truth) the oracle."""
    p, lspec = params(cfg), _leads_spec(spec)
    first, end = p.grid()
    grid = F.snapshot_grid(first, end, p.features)
    comp = F.companies_frame(tables["customers"], tables["noncustomers"])
    usage = tables["usage_actions"]
    rows = F.label_rows(F.prediction_rows(comp, usage, grid), comp, lspec.horizon_days)
    if rows.height == 0 and usage.height > 0:
        # almost always a real export read with the generator's calendar: say which dates to set
        span = usage.select(
            pl.col("WHEN_TIMESTAMP").min().alias("lo"), pl.col("WHEN_TIMESTAMP").max().alias("hi")
        )
        lo, hi = span.row(0)
        raise DataError(
            f"features: no prediction rows on the snapshot grid {first:%Y-%m-%d}..{end:%Y-%m-%d} "
            f"(usage spans {lo:%Y-%m-%d}..{hi:%Y-%m-%d}); set params.features.first_snapshot and "
            "params.features.data_end to the export's dates"
        )
    rows = assign_split(
        rows.lazy(), cfg.split, first_test_snapshot(p.split, grid), lspec.horizon_days
    ).collect()
    feats = F.build_features(rows, comp, usage, lspec)
    if truth is not None:
        feats = snapshot_truth(feats.lazy(), truth, lspec.horizon_days, p.grid_origin()).collect()
    out = feats.with_columns(
        pl.col("ID").alias("patient_id"),
        ((pl.col("SNAPSHOT") - pl.lit(from_epoch_day(0))).dt.total_days()).cast(pl.Int32).alias("year"),
        pl.col("LABEL").cast(pl.Float32).alias("label"),
        pl.col("LABEL").cast(pl.Int8).alias("label_rec"),
        pl.lit(1.0, dtype=pl.Float32).alias("sample_weight"),
        pl.col("EMPLOYEE_RANGE").cast(pl.String).cast(pl.Enum(list(F.EMPLOYEE_RANGES))),
    )
    evals = []
    if truth is not None:
        # the label is observed without error (CLOSEDATE), so the true label is the recorded one
        evals = [
            pl.col("LABEL").cast(pl.Int8).alias("eval_label_true"),
            pl.col("P_TRUE").cast(pl.Float32).alias("eval_oracle_risk"),
        ]
    return out.select(
        "patient_id",
        "year",
        "split",
        *spec.feature_names,
        "label",
        "label_rec",
        "sample_weight",
        *evals,
        "EMPLOYEE_RANGE",
        "INDUSTRY",
    )


class LeadsFeatures:
    """Point-in-time usage windows + firmographics + seasonality (``clinrisk.usecases.leads.features``)."""

    def fit_spec(self, cfg: ClinriskConfig, train: Mapping[str, pl.LazyFrame]) -> FeatureSpec:
        """Industry levels from training companies only (``split.train_buckets``; a no-op filter when the
        caller already passed only those)."""
        frames = _frames(train)
        comp = F.companies_frame(frames["customers"], frames["noncustomers"])
        comp = comp.filter(in_buckets(cfg.split.train_buckets))
        return _feature_spec(F.fit_feature_spec(comp, params(cfg).features))

    def build(
        self,
        cfg: ClinriskConfig,
        tables: Mapping[str, pl.LazyFrame],
        spec: FeatureSpec,
        truth: pl.LazyFrame | None,
    ) -> pl.LazyFrame:
        return feature_table(cfg, _frames(tables), spec, truth).lazy()


# --------------------------------------------------------------------------------------------- serving

EXAMPLE_INSTANCE: dict[str, Any] = {
    "as_of": "2020-05-04",
    "ALEXA_RANK": 125000,
    "EMPLOYEE_RANGE": "26 to 50",
    "INDUSTRY": "Software",
    "usage": [
        {
            "WHEN_TIMESTAMP": f"2020-04-{d:02d} 00:00:00",
            "ACTIONS_CRM_CONTACTS": 40 + d,
            "ACTIONS_CRM_COMPANIES": 12,
            "ACTIONS_CRM_DEALS": 3,
            "ACTIONS_EMAIL": 20,
            "USERS_CRM_CONTACTS": 3,
            "USERS_CRM_COMPANIES": 2,
            "USERS_CRM_DEALS": 1,
            "USERS_EMAIL": 2,
        }
        for d in (6, 13, 20, 27)
    ],
}


class LeadsServing:
    """V1 instances = a company's firmographics + its usage rows before ``as_of`` (``request``)."""

    def example_instance(self) -> Mapping[str, Any]:
        return EXAMPLE_INSTANCE

    def parse(self, body: Any, spec: FeatureSpec, cfg: ServingConfig) -> ServingBatch:
        parsed = parse_instances(body, cfg.max_instances)
        return ServingBatch(parsed.tables(), keys_of(parsed.as_of))

    def features(self, batch: ServingBatch, spec: FeatureSpec) -> pl.DataFrame:
        tables = _frames(batch.tables)
        comp = F.companies_frame(tables["customers"], tables["noncustomers"])
        rows = pl.DataFrame(
            {"ID": [k[0] for k in batch.keys], "SNAPSHOT": [from_epoch_day(k[1]) for k in batch.keys]},
            schema={"ID": pl.Int64, "SNAPSHOT": F.TS},
        )
        feats = F.build_features(rows, comp, tables["usage_actions"], _leads_spec(spec))
        return rows.join(feats, on=["ID", "SNAPSHOT"], how="left", maintain_order="left").select(
            spec.feature_names
        )

    def instances(
        self, tables: Mapping[str, pl.DataFrame], keys: Sequence[tuple[int, int]]
    ) -> list[dict[str, Any]]:
        frames = _frames(tables)
        comp = F.companies_frame(frames["customers"], frames["noncustomers"])
        usage = frames["usage_actions"]
        out = []
        for company_id, day in keys:
            row = comp.filter(pl.col("ID") == company_id)
            if row.height != 1:
                raise DataError(f"company {company_id}: not in the tables")
            out.append(
                instance_for(
                    row.row(0, named=True), usage.filter(pl.col("ID") == company_id), from_epoch_day(day)
                )
            )
        return out


LABELS = LabelDefinition(
    description="the company's CLOSEDATE (first paid day) falls in (snapshot, snapshot + features.horizon_days]",
    horizon="params.features.horizon_days days after the snapshot",
    slices=SLICES,
    top_k_fractions=(0.01, 0.05, 0.1, 0.2),
)
