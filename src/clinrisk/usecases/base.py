"""The use-case plugin interface: what a prediction problem declares to get the whole platform for free.

A use case is a :class:`UseCase` value built from four parts, each a small object with pure methods
(frames in, frames/results out, no paths except where a real file format is read):

- :class:`DataSource`  — a synthetic generator with known truth (plan -> shards -> manifest) and the
  ingestion of real files in the use case's own formats;
- :class:`RawSchema`   — the raw pandera schemas and the validation that quarantines rows with reasons;
- :class:`FeatureDefinition` — ONE feature + label function for training and serving, producing the
  shared feature table (``clinrisk.feature_table``), and the frozen :class:`FeatureSpec`;
- :class:`ServingContract` — the V1 request contract: parse instances into raw tables, then the same
  feature function gives one row per instance.

Everything downstream of the feature table is shared and parameterised only by :class:`UseCaseNames` and
the config: shard fan-out (from the plan), validation report and gates, feature selection, LightGBM,
calibration, threshold, evaluation (slices named by :class:`LabelDefinition`), MLflow tracking and
registry, the model bundle, the KServe predictor, images, manifests and the canary rollout.

The framework owns every path: it writes raw tables to ``raw/<table>/shard=NNN/part.parquet`` and the
truth to ``raw/truth/shard=NNN/part.parquet``, validated tables to ``validated/<table>/shard=NNN``, and
hands the use case frames. See docs/usecases.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import polars as pl
from pydantic import BaseModel

from clinrisk.feature_table import FeatureSpec

if TYPE_CHECKING:
    import pandera.polars as pa

    from clinrisk.config import ClinriskConfig, ServingConfig

# Quarantine columns every validated shard's rejected rows carry (one row per failing raw row).
QUARANTINE_REASON_COLUMNS = ("_row", "_check", "_column", "_reason")
TRUTH_TABLE = "truth"


@dataclass(frozen=True)
class UseCaseNames:
    """Names the shared platform uses for this use case.

    ``model_name`` is the MLflow registered model, the KServe model (``/v1/models/<model_name>``) and the
    InferenceService; ``namespace`` is the Kubernetes namespace; ``experiment`` the MLflow experiment.
    """

    usecase: str
    namespace: str
    model_name: str
    experiment: str


@dataclass(frozen=True)
class RawShard:
    """One shard of raw data: the observed tables by name, plus the generator's truth (None for real data).

    A shard holds whole entities: every row of one entity (patient, company) is in exactly one shard.
    """

    tables: Mapping[str, pl.DataFrame]
    truth: pl.DataFrame | None = None


@dataclass(frozen=True)
class ValidatedShard:
    """Validation result of one raw shard: passing rows per table, quarantined rows per table (the table's
    columns plus ``_row, _check, _column, _reason``), and JSON-able stats (at least ``rows_in``: the rows
    read over all tables; the framework adds the valid/quarantined counts and per-check failures) that
    the framework sums into the validation report."""

    tables: Mapping[str, pl.DataFrame]
    quarantine: Mapping[str, pl.DataFrame]
    stats: Mapping[str, Any]


@dataclass(frozen=True)
class ServingBatch:
    """Validated V1 instances as raw tables (same column names/dtypes as validated data) and the key of each
    instance's prediction row, in request order."""

    tables: Mapping[str, pl.DataFrame]
    keys: Sequence[tuple[int, int]]  # (entity, time) of the row to score, one per instance

    @property
    def n_instances(self) -> int:
        return len(self.keys)


@runtime_checkable
class DataSource(Protocol):
    """Where raw data comes from. ``tables`` names the observed tables (file stems under raw/)."""

    tables: tuple[str, ...]

    def plan(self, cfg: ClinriskConfig) -> dict[str, Any]:
        """JSON-able generation plan; MUST hold ``n_shards`` (int >= 1). The plan owns the fan-out: the
        pipeline runs exactly ``range(plan["n_shards"])`` shard tasks."""
        ...

    def generate_shard(self, cfg: ClinriskConfig, plan: Mapping[str, Any], shard: int) -> RawShard:
        """Deterministic synthetic shard ``shard`` of the plan (same plan + shard -> same bytes)."""
        ...

    def manifest(
        self, cfg: ClinriskConfig, plan: Mapping[str, Any], read_shard: Callable[[int], RawShard]
    ) -> dict[str, Any]:
        """Dataset manifest from every shard, read one at a time through ``read_shard``: at least
        ``n_shards``, ``rows`` (observed rows over all tables), ``rows_per_shard`` and a content hash
        (``observed_hash``); the generator's prevalence when it knows it."""
        ...

    def ingest(self, cfg: ClinriskConfig, source: Path) -> Mapping[str, pl.LazyFrame]:
        """Read a user's real export (a directory or file in the use case's own formats) as raw tables
        named like ``tables``; raise ``DataError("<file>: <problem>")`` for unreadable files. Row-level
        problems are left to validation (quarantine), not raised here."""
        ...

    def entity_column(self, table: str) -> str:
        """Column holding the entity id in raw ``table`` (what ingestion shards by)."""
        ...

    # Optional method, called by ingestion when the object has it:
    #   entity_key(table: str) -> pl.Expr   the entity id of raw ``table`` normalised to Int64 (null when it
    #                                        is no id; such rows go to shard 0 for validation to quarantine).
    #   Default: :func:`whole_number_entity_key` of ``entity_column(table)``. It MUST give one key per
    #   entity across every table and file, however each file happens to spell the id.


def whole_number_entity_key(column: str) -> pl.Expr:
    """The default entity key: an integer id, also when a file spells it as text or as a whole float
    (``"24"``, ``" 24 "``, ``"24.0"``, ``24.0`` -> 24); anything else is null. Integer ids map to
    themselves, so shard assignment of integer-typed ids is unchanged."""
    text = pl.col(column).cast(pl.String).str.strip_chars()
    as_int = text.cast(pl.Int64, strict=False)
    as_float = text.cast(pl.Float64, strict=False)
    whole = as_float.is_finite() & (as_float == as_float.round(0)) & (as_float.abs() < 2.0**53)
    return pl.coalesce(as_int, pl.when(whole).then(as_float.cast(pl.Int64)))


@runtime_checkable
class RawSchema(Protocol):
    """The raw data contract: pandera schemas (polars backend) and the validation that applies them."""

    def schemas(self, cfg: ClinriskConfig) -> Mapping[str, pa.DataFrameSchema]:
        """One pandera schema per observed table."""
        ...

    def validate(self, cfg: ClinriskConfig, raw: RawShard, shard: int) -> ValidatedShard:
        """Split every table of ``raw`` into passing and quarantined rows, each quarantined row with its
        reasons. Raise ``DataError`` only for what no row-level quarantine can express (missing column,
        unreadable dtype)."""
        ...


@runtime_checkable
class FeatureDefinition(Protocol):
    """ONE definition of features and labels for training and serving."""

    def fit_spec(self, cfg: ClinriskConfig, train: Mapping[str, pl.LazyFrame]) -> FeatureSpec:
        """Freeze the spec (feature names, dtypes, category levels) from TRAINING-split entities only;
        set ``spec.usecase`` to the use case's name and ``spec.forbidden`` to raw columns never usable."""
        ...

    def build(
        self,
        cfg: ClinriskConfig,
        tables: Mapping[str, pl.LazyFrame],
        spec: FeatureSpec,
        truth: pl.LazyFrame | None,
    ) -> pl.LazyFrame:
        """The feature table of one shard (``clinrisk.feature_table``): keys + split, exactly
        ``spec.feature_names``, the labels and, when ``truth`` is given, ``eval_label_true`` and
        ``eval_oracle_risk``. Point-in-time: a row's features read only data dated before its
        prediction time."""
        ...

    # Optional attribute: entity_local = True declares that each row of ``build``'s table depends only on
    #   its own entity's rows and that the table is sorted by entity first; the framework then builds a
    #   shard in blocks of whole entities (features.block_rows raw rows) and concatenates them (less memory).
    # Optional methods, called by the framework when the object has them:
    #   check_table(table: pl.DataFrame, spec, where: str) -> None      stricter check of a built shard
    #   shard_extras(cfg, tables) -> (dict[name, pl.DataFrame], dict)   side tables written under
    #                                                                   features/<name>/shard=NNN + summary fields
    #   schema_document(spec, with_truth: bool) -> dict                 written as features/feature_schema.json


@dataclass(frozen=True)
class LabelDefinition:
    """What the label means and how evaluation slices it.

    ``slices``: feature-table columns (features or kept raw columns) evaluation reports per level;
    ``horizon``: the outcome window in words (reports, model card); ``top_k_fractions``: capacity
    fractions for lift/gains (e.g. a sales team's weekly call list), empty when not meaningful.
    """

    description: str
    horizon: str
    slices: tuple[str, ...] = ()
    top_k_fractions: tuple[float, ...] = ()


@runtime_checkable
class ServingContract(Protocol):
    """The V1 request contract of the use case's model server."""

    def example_instance(self) -> Mapping[str, Any]:
        """A valid instance every bundle must score at start-up (the readiness self-check)."""
        ...

    def parse(self, body: Any, spec: FeatureSpec, cfg: ServingConfig) -> ServingBatch:
        """Validate a decoded V1 body (``{"instances": [...]}``, at most ``cfg.max_instances``) into raw
        tables; raise ``clinrisk.serving.request.InvalidRequest`` naming the instance and field."""
        ...

    def features(self, batch: ServingBatch, spec: FeatureSpec) -> pl.DataFrame:
        """One feature row per instance, in request order, with exactly ``spec.feature_names`` (the same
        definitions as :meth:`FeatureDefinition.build`; tests hold them equal)."""
        ...

    def instances(
        self, tables: Mapping[str, pl.DataFrame], keys: Sequence[tuple[int, int]]
    ) -> list[dict[str, Any]]:
        """V1 instances whose :meth:`features` equal the feature table's rows ``keys`` (entity, time) built
        from the validated ``tables`` (the parity test, serving examples and load tests use them)."""
        ...


@dataclass(frozen=True)
class ExperimentHooks:
    """How the shared experiments machinery (:mod:`clinrisk.experiments`) runs and compares the runs of a use
    case whose outputs are not the tabular pipeline's (patient_id, year) predictions.

    The use case says how to run ONE config and how to read a finished run's per-unit scores; the shared
    machinery does the rest: every arm of a suite, one MLflow store for all of them, pairing the runs on
    ``unit``, the paired bootstrap that resamples ``group`` (units of one group are correlated), deltas vs
    the baseline with CIs, the winner rule and the Markdown + JSON report.

    - ``run(base_config, overrides, runner)``: train/evaluate one config (the suite's overrides applied)
      and return the run's entry: at least ``predictions`` (the path of its per-unit scores file); also,
      when known, ``mlflow_run_id``, ``tracking_uri``, ``model_uri``, ``pipeline_dir`` (the run's output
      folder) and ``summary`` (JSON-able numbers shown in the report, e.g. best epoch, registry verdict).
      Raise ConfigError for a runner it does not support.
    - ``scores(entry)``: the per-unit scores of a finished run (its entry as ``run`` returned it): one row per
      unit with ``unit``, ``group`` and every column of ``metrics``; DataError when unreadable.
    - ``metrics``: per-unit score columns and their improving direction (the run's metric is their mean).
    """

    run: Callable[[Path | None, list[str], str], dict[str, Any]]
    scores: Callable[[Mapping[str, Any]], pl.DataFrame]
    unit: str
    group: str
    metrics: Mapping[str, Literal["higher", "lower"]]
    # How the report names the units and the split they come from, e.g. "validation images".
    unit_label: str = "units"


@dataclass(frozen=True)
class UseCase:
    """A registered use case (see ``clinrisk.usecases.get``)."""

    names: UseCaseNames
    description: str
    source: DataSource
    schema: RawSchema
    features: FeatureDefinition
    labels: LabelDefinition
    serving: ServingContract
    # Default config files shipped with the use case (relative to the repository root).
    configs: Mapping[str, str] = field(default_factory=dict)
    # Pydantic model of the config's ``params`` section (the use case's own knobs); None = no params.
    config_model: type[BaseModel] | None = None
    # "tabular": the shared feature table -> LightGBM -> tabular V1 path. "own": the use case trains and
    # serves its own model (e.g. segmentation's UNet over images); only its DataSource and RawSchema are
    # shared, and its ``features``/``serving`` parts refuse the tabular steps with a ConfigError.
    model_family: Literal["tabular", "own"] = "tabular"
    # The main job's end-of-run serving smoke test (`clinrisk run`) for a use case that serves its own model:
    # (config, registered model URI, the run's validated dataset folder) -> {"url", "bundle", "request",
    # "response"}, raising StageError when the served model does not answer. None: the platform's tabular one.
    serving_smoke_test: Callable[[ClinriskConfig, str, Path], dict[str, Any]] | None = None
    # How `clinrisk experiments run|compare` runs and compares this use case's runs, for a use case whose
    # outputs are not the tabular (patient_id, year) predictions. None: the tabular pipeline path.
    experiments: ExperimentHooks | None = None

    def params(self, cfg: ClinriskConfig) -> Any:
        """``cfg.params`` validated by :attr:`config_model` (defaults filled in)."""
        if self.config_model is None:
            return None
        return self.config_model.model_validate(cfg.params)

    @property
    def name(self) -> str:
        return self.names.usecase
