"""The clinical use case: incident type 2 diabetes within H years from EHR patient-years (the default).

Everything here delegates to the clinical modules (``clinrisk.generator``, ``schemas``/``validate``,
``features``/``labels``/``splits``, ``serving.request``); this module only states them as the plugin
interface of ``clinrisk.usecases.base``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from clinrisk.errors import DataError
from clinrisk.feature_table import FeatureSpec
from clinrisk.usecases.base import (
    LabelDefinition,
    RawShard,
    ServingBatch,
    UseCase,
    UseCaseNames,
    ValidatedShard,
)

if TYPE_CHECKING:
    import pandera.polars as pa

    from clinrisk.config import ClinriskConfig, ServingConfig

NAME = "clinical"
OBSERVED = "observed"


def _observed(tables: Mapping[str, Any]) -> Any:
    if OBSERVED not in tables:
        raise DataError(f"clinical data: table {OBSERVED!r} missing (got {sorted(tables)})")
    return tables[OBSERVED]


class ClinicalSource:
    """Synthetic patient-years (docs/science.md §1) and real exports with the observed columns."""

    tables: tuple[str, ...] = (OBSERVED,)

    def plan(self, cfg: ClinriskConfig) -> dict[str, Any]:
        from clinrisk.generator.dataset import plan_generation

        return plan_generation(cfg)

    def generate_shard(self, cfg: ClinriskConfig, plan: Mapping[str, Any], shard: int) -> RawShard:
        from clinrisk.generator.dataset import simulate_shard

        observed, truth = simulate_shard(cfg, dict(plan), shard)
        return RawShard({OBSERVED: observed}, truth)

    def manifest(
        self, cfg: ClinriskConfig, plan: Mapping[str, Any], read_shard: Callable[[int], RawShard]
    ) -> dict[str, Any]:
        from clinrisk.generator.dataset import build_manifest

        def both(shard: int) -> tuple[pl.DataFrame, pl.DataFrame]:
            raw = read_shard(shard)
            if raw.truth is None:
                raise DataError(f"shard {shard}: generated shard has no truth table")
            return raw.tables[OBSERVED], raw.truth

        return build_manifest(cfg, dict(plan), both)

    def ingest(self, cfg: ClinriskConfig, source: Path) -> Mapping[str, pl.LazyFrame]:
        """A Parquet or CSV file, or a directory of them, with the observed columns (docs/contracts.md)."""
        source = Path(source)
        files = (
            sorted(source.glob("**/*.parquet")) + sorted(source.glob("**/*.csv"))
            if source.is_dir()
            else [source]
        )
        if not files:
            raise DataError(f"{source}: no .parquet or .csv files")
        frames = []
        for f in files:
            if not f.is_file():
                raise DataError(f"{f}: not found")
            if f.suffix == ".parquet":
                frames.append(pl.scan_parquet(f))
            elif f.suffix == ".csv":
                # types inferred over the whole file; validation casts to the contract and quarantines
                frames.append(pl.scan_csv(f, infer_schema_length=None))
            else:
                raise DataError(f"{f}: expected a .parquet or .csv file")
        return {OBSERVED: pl.concat(frames, how="diagonal_relaxed")}

    def entity_column(self, table: str) -> str:
        return "patient_id"


class ClinicalSchema:
    """One observed table; the rule table of ``clinrisk.schemas`` is both the pandera schema and the
    quarantine logic."""

    def schemas(self, cfg: ClinriskConfig) -> Mapping[str, pa.DataFrameSchema]:
        from clinrisk.schemas import raw_schema

        return {OBSERVED: raw_schema(cfg.generate.first_year, cfg.generate.last_year)}

    def validate(self, cfg: ClinriskConfig, raw: RawShard, shard: int) -> ValidatedShard:
        from clinrisk.validate import validate_frame

        g = cfg.generate
        res = validate_frame(_observed(raw.tables), g.first_year, g.last_year, f"shard {shard}", shard)
        return ValidatedShard({OBSERVED: res.valid}, {OBSERVED: res.quarantine}, res.stats)


class ClinicalFeatures:
    """The feature function of ``clinrisk.features`` with the labels of ``clinrisk.labels``."""

    # Every row's features, labels and split read only its own patient's rows, and the table is sorted by
    # (patient_id, year): the framework may build a shard in blocks of whole patients (features.block_rows).
    entity_local = True

    def fit_spec(self, cfg: ClinriskConfig, train: Mapping[str, pl.LazyFrame]) -> FeatureSpec:
        from clinrisk.features import fit_feature_spec

        return fit_feature_spec(_observed(train), cfg)

    def build(
        self,
        cfg: ClinriskConfig,
        tables: Mapping[str, pl.LazyFrame],
        spec: FeatureSpec,
        truth: pl.LazyFrame | None,
    ) -> pl.LazyFrame:
        from clinrisk.features import features_lazy

        return features_lazy(_observed(tables), spec, cfg, truth)

    # Optional hooks the framework calls when present (see clinrisk.usecases.base.FeatureDefinition).

    def check_validated(self, table: str, files: list[Path]) -> None:
        """Validated shards typed as the observed schema, without duplicate (patient_id, year) rows
        (``clinrisk validate`` quarantines duplicates; another folder handed to the features stage may not)."""
        from clinrisk.io import check_no_duplicate_keys, check_parquet_files
        from clinrisk.schemas import OBSERVED_SCHEMA

        check_parquet_files(files, dict(OBSERVED_SCHEMA))
        for f in files:
            check_no_duplicate_keys(f, ["patient_id", "year"])

    def check_table(self, table: pl.DataFrame, spec: FeatureSpec, where: str) -> None:
        """The clinical pandera feature schema (value ranges per feature family)."""
        from clinrisk.feature_schema import validate_features

        validate_features(table, spec, where=where)

    def shard_extras(
        self, cfg: ClinriskConfig, tables: Mapping[str, pl.LazyFrame]
    ) -> tuple[dict[str, pl.DataFrame], dict[str, Any]]:
        """The values the units layer could not convert (``unit_quarantine/``) and per-analyte counts, resolved
        in blocks of whole patients (``features.block_rows``) as the features are."""
        from clinrisk.entity_blocks import block_bounds, block_starts
        from clinrisk.features import cast_raw
        from clinrisk.units import unit_audit

        observed = _observed(tables)
        starts = block_starts({OBSERVED: observed}, lambda _: "patient_id", cfg.features.block_rows)
        raw = cast_raw(observed).sort("patient_id", "year")
        uq, counts = unit_audit(raw, blocks=block_bounds(starts) if len(starts) > 1 else None)
        return {"unit_quarantine": uq}, {"units": counts, "unit_quarantine_rows": uq.height}

    def schema_document(self, spec: FeatureSpec, with_truth: bool) -> dict[str, Any]:
        """``feature_schema.json``: the pandera feature schema as JSON."""
        from clinrisk.feature_schema import feature_schema_dict

        return feature_schema_dict(spec, with_eval=with_truth)


class ClinicalServing:
    """Static attributes + yearly history per instance (``clinrisk.serving.request``)."""

    def example_instance(self) -> Mapping[str, Any]:
        from clinrisk.serving.inference import EXAMPLE_INSTANCE

        return EXAMPLE_INSTANCE

    def parse(self, body: Any, spec: FeatureSpec, cfg: ServingConfig) -> ServingBatch:
        from clinrisk.serving.request import validate_request

        req = validate_request(
            body,
            window_years=spec.window_years,
            max_instances=cfg.max_instances,
            max_history_years=cfg.max_history_years,
        )
        return ServingBatch({OBSERVED: req.frame}, [(i, y) for i, y in enumerate(req.current_years)])

    def features(self, batch: ServingBatch, spec: FeatureSpec) -> pl.DataFrame:
        from clinrisk.features import build_feature_frame

        feats = build_feature_frame(_observed(batch.tables).lazy(), spec).collect()
        keys = pl.DataFrame(
            {"patient_id": [k[0] for k in batch.keys], "year": [k[1] for k in batch.keys]},
            schema={"patient_id": feats.schema["patient_id"], "year": feats.schema["year"]},
        )
        rows = keys.join(feats, on=["patient_id", "year"], how="left", maintain_order="left")
        return rows.select(spec.feature_names)

    def instances(
        self, tables: Mapping[str, pl.DataFrame], keys: Sequence[tuple[int, int]]
    ) -> list[dict[str, Any]]:
        """The patient's full history up to year t (which reproduces the training features exactly)."""
        from clinrisk.serving.request import instance_from_rows

        obs = _observed(tables)
        out = []
        for pid, year in keys:
            rows = obs.filter((pl.col("patient_id") == pid) & (pl.col("year") <= year)).sort("year")
            if rows.height == 0:
                raise DataError(f"patient {pid}: no rows up to year {year}")
            out.append(instance_from_rows(rows.to_dicts()))
        return out


USECASE = UseCase(
    names=UseCaseNames(usecase=NAME, namespace="clinrisk", model_name="clinrisk", experiment="clinrisk"),
    description="Incident type 2 diabetes within H years of a patient-year, from EHR-like data.",
    source=ClinicalSource(),
    schema=ClinicalSchema(),
    features=ClinicalFeatures(),
    labels=LabelDefinition(
        description="recorded (E0/E1b/E2) type 2 diabetes diagnosis within labels.horizon_years of year t",
        horizon="labels.horizon_years calendar years",
        slices=("insurance", "ethnicity", "age_band", "sex"),  # age_band: evaluation bands the age column
    ),
    serving=ClinicalServing(),
    configs={"default": "configs/clinical/default.yaml", "tiny": "configs/clinical/tiny.yaml"},
)
