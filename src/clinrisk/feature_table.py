"""The feature table: what every use case's feature stage produces and every shared stage reads.

A use case (``clinrisk.usecases``) turns its own raw data into this table; selection, training,
calibration, threshold, evaluation, the bundle and serving only ever see this table and the frozen
``FeatureSpec`` that describes its model inputs. Nothing here knows about patients or companies.

Columns of one row (one *prediction row*: one entity at one prediction time):

- keys: ``ENTITY`` (Int64, the cluster for bootstrap CIs and the unit of the train/test split),
  ``TIME`` (integer prediction period: a calendar year for clinical, a snapshot index for leads),
  ``SPLIT`` (Enum of ``clinrisk.splits.SPLIT_LEVELS``). The names are historical: ``patient_id`` and
  ``year`` are the framework's entity and period keys whatever the use case.
- model inputs: exactly ``spec.feature_names`` (Float32 / Int8 / Int16 / UInt8 / Enum).
- labels: ``label`` (Float32 target, hard or soft), ``label_rec`` (Int8 recorded outcome),
  ``sample_weight`` (Float32; 0 drops a row).
- evaluation-only, prefix ``eval_``: at least ``eval_label_true`` (Int8, the generator's truth) and
  ``eval_oracle_risk`` (Float32, the true risk); never model inputs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from clinrisk.errors import DataError

SPEC_VERSION = 1
OTHER = "__OTHER__"

ENTITY = "patient_id"
TIME = "year"
SPLIT = "split"
KEY_COLUMNS = (ENTITY, TIME, SPLIT)
LABEL_COLUMNS = ("label", "label_rec", "sample_weight")
EVAL_PREFIX = "eval_"
TRUTH_PREFIX = "truth_"
EVAL_REQUIRED = ("eval_label_true", "eval_oracle_risk")

# Never a model input, in any use case: keys, labels and evaluation-only columns (matched by prefix too).
NON_FEATURE_COLUMNS = frozenset({*KEY_COLUMNS, *LABEL_COLUMNS})
NON_FEATURE_PREFIXES = (EVAL_PREFIX, TRUTH_PREFIX)


def check_feature_names(names: Sequence[str], forbidden: Iterable[str] = ()) -> None:
    """THE leakage guard: refuse an empty or duplicated feature list, keys, labels, ``eval_*``/``truth_*``
    columns, and the use case's own ``forbidden`` raw columns (e.g. the code the label is read from)."""
    names = list(names)
    if not names:
        raise DataError("feature_names: empty feature list")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"feature_names: duplicated features {dup}")
    extra = frozenset(forbidden)
    bad = [n for n in names if n in NON_FEATURE_COLUMNS or n in extra or n.startswith(NON_FEATURE_PREFIXES)]
    if bad:
        raise DataError(
            f"feature_names: {bad} are id, label, truth or evaluation columns and may not be features"
        )


_DTYPES: dict[str, pl.DataType] = {
    "Float32": pl.Float32(),
    "Int8": pl.Int8(),
    "Int16": pl.Int16(),
    "UInt8": pl.UInt8(),
}


class FeatureSpec(BaseModel):
    """Frozen description of the model inputs (``feature_spec.json``, in the features dir and the bundle).

    Shared fields: ``usecase``, ``feature_names``, ``dtypes``, ``categories``, ``units``, ``forbidden``.
    ``window_years``/``locf``/``horizon_years``/``raw_fields``/``rollups`` are the clinical feature
    function's parameters (kept at top level for the bundles already written); any other use case keeps
    its parameters in ``params``.
    """

    spec_version: int = SPEC_VERSION
    usecase: str = "clinical"
    window_years: int = Field(1, ge=1)
    locf: bool = False
    horizon_years: int = Field(1, ge=1)
    feature_names: list[str]
    dtypes: dict[str, str]
    categories: dict[str, list[str]] = Field(default_factory=dict)
    units: dict[str, str] = Field(default_factory=dict)
    raw_fields: list[str] = Field(default_factory=list)
    rollups: dict[str, int] = Field(default_factory=dict, description="categorical -> prefix length")
    forbidden: list[str] = Field(default_factory=list, description="raw columns that must never be features")
    params: dict[str, Any] = Field(default_factory=dict, description="use-case feature parameters")

    def to_json(self, path: Path | None = None) -> str:
        """JSON text (and write it to ``path`` if given)."""
        text = json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> FeatureSpec:
        """Load from a path or JSON text; a bad file is a DataError naming it."""
        text = source
        where = "feature spec"
        if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
            where = str(source)
            try:
                text = Path(source).read_text()
            except FileNotFoundError:
                raise DataError(f"{source}: feature spec not found") from None
        try:
            spec = cls.model_validate_json(str(text))
        except ValueError as exc:
            raise DataError(f"{where}: invalid feature spec ({exc})") from None
        spec.check()
        return spec

    def check(self) -> None:
        """Leakage guard + every feature has a known dtype (and levels when it is an Enum)."""
        check_feature_names(self.feature_names, self.forbidden)
        for name in self.feature_names:
            d = self.dtypes.get(name)
            if d != "Enum" and d not in _DTYPES:
                raise DataError(f"feature_spec.dtypes.{name}: {d!r} is not one of {[*_DTYPES, 'Enum']}")
            if d == "Enum" and name not in self.categories:
                raise DataError(f"feature_spec.categories.{name}: missing levels of an Enum feature")

    def polars_dtype(self, name: str) -> pl.DataType:
        """Polars dtype of feature ``name``."""
        d = self.dtypes[name]
        if d == "Enum":
            return pl.Enum(self.categories[name])
        return _DTYPES[d]


def feature_columns(spec: FeatureSpec) -> list[str]:
    """Exactly the columns a model may read: ``spec.feature_names`` (never keys/labels/eval_)."""
    check_feature_names(spec.feature_names, spec.forbidden)
    return list(spec.feature_names)


def categorical_features(spec: FeatureSpec) -> list[str]:
    """Feature names to pass to LightGBM as ``categorical_feature`` (Enum physical codes)."""
    return [n for n in spec.feature_names if spec.dtypes[n] == "Enum"]


def feature_matrix(df: pl.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Float32 (n, p) matrix in spec order: Enum -> physical code, null -> NaN."""
    cols = feature_columns(spec)
    out = df.select(
        [(pl.col(c).to_physical() if spec.dtypes[c] == "Enum" else pl.col(c)).cast(pl.Float32) for c in cols]
    )
    return out.to_numpy().astype(np.float32, copy=False)


def check_feature_table(schema: pl.Schema | dict[str, Any], spec: FeatureSpec, *, where: str) -> None:
    """A features shard carries the keys, the labels, ``eval_label_true``/``eval_oracle_risk`` and every
    feature of the spec; the DataError names the file (``where``) and the missing columns."""
    need = [*KEY_COLUMNS, *LABEL_COLUMNS, *spec.feature_names]
    missing = [c for c in need if c not in schema]
    if missing:
        raise DataError(f"{where}: feature table lacks columns {missing}")


__all__ = [
    "ENTITY",
    "EVAL_PREFIX",
    "EVAL_REQUIRED",
    "KEY_COLUMNS",
    "LABEL_COLUMNS",
    "NON_FEATURE_COLUMNS",
    "NON_FEATURE_PREFIXES",
    "OTHER",
    "SPEC_VERSION",
    "SPLIT",
    "TIME",
    "FeatureSpec",
    "categorical_features",
    "check_feature_names",
    "check_feature_table",
    "feature_columns",
    "feature_matrix",
]
