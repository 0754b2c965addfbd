"""The model bundle: the one versioned artifact that evaluation, MLflow and serving all load.

Layout (docs/contracts.md "Model bundle")::

    model.txt  feature_spec.json  calibration.json  threshold.json  reference_stats.json
    metrics.json  config.yaml  metadata.json

Every probability leaves the bundle through :meth:`ModelBundle.predict_proba`: raw LightGBM margin →
class-weight odds correction (docs/science.md §4.1) → calibration map. Feature encoding for prediction and for
training goes through the same :func:`features_to_matrix`, so categorical codes can never disagree.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import polars as pl
import yaml

from clinrisk.calibration import apply_calibration, validate_calibration
from clinrisk.errors import DataError

if TYPE_CHECKING:
    import lightgbm as lgb

    from clinrisk.config import ClinriskConfig

FloatArray = npt.NDArray[np.float64]

MODEL_FILE = "model.txt"
SPEC_FILE = "feature_spec.json"
CALIBRATION_FILE = "calibration.json"
THRESHOLD_FILE = "threshold.json"
REFERENCE_FILE = "reference_stats.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
METADATA_FILE = "metadata.json"
BUNDLE_FILES: tuple[str, ...] = (
    MODEL_FILE,
    SPEC_FILE,
    CALIBRATION_FILE,
    THRESHOLD_FILE,
    REFERENCE_FILE,
    METRICS_FILE,
    CONFIG_FILE,
    METADATA_FILE,
)
OTHER_LEVEL = "__OTHER__"


# ------------------------------------------------------------------------------------- feature matrix


def encode_column(name: str, dtype: pl.DataType, levels: list[str] | None) -> pl.Expr:
    """Model-matrix expression of one feature: a category -> its index in ``levels`` by level name (unseen
    -> ``__OTHER__``, null stays missing), a number -> Float32 (training, evaluation and serving share it)."""
    col = pl.col(name)
    if levels is not None and (dtype == pl.String or isinstance(dtype, pl.Enum | pl.Categorical)):
        # Map by level *name* so the code is the index in the spec, whatever order the column's Enum has;
        # unseen levels go to __OTHER__ (docs/science.md §5.2), nulls stay missing.
        other = levels.index(OTHER_LEVEL) if OTHER_LEVEL in levels else None
        coded = col.cast(pl.String).replace_strict(
            levels, list(range(len(levels))), default=other, return_dtype=pl.Float32
        )
        return pl.when(col.is_null()).then(None).otherwise(coded).alias(name)
    if dtype == pl.String or isinstance(dtype, pl.Enum | pl.Categorical):
        raise DataError(f"column {name}: text values but no categories in the feature spec")
    if not (dtype.is_numeric() or dtype == pl.Boolean):
        raise DataError(f"column {name}: dtype {dtype} cannot be a model feature")
    return col.cast(pl.Float32).alias(name)


def features_to_matrix(
    df: pl.DataFrame, feature_names: list[str], categories: dict[str, list[str]] | None = None
) -> npt.NDArray[np.float32]:
    """C-contiguous float32 matrix of ``feature_names`` (nulls → NaN, categoricals → spec codes).

    Extra columns are ignored; a missing feature column is a DataError naming it.
    """
    missing = [n for n in feature_names if n not in df.columns]
    if missing:
        raise DataError(f"features: missing feature column(s) {missing}")
    cats = categories or {}
    exprs = [encode_column(n, df.schema[n], cats.get(n)) for n in feature_names]
    out = df.select(exprs).to_numpy()
    return np.ascontiguousarray(out, dtype=np.float32)


# ------------------------------------------------------------------------------------ probability maps


def odds_correct_logit(raw: npt.ArrayLike, positive_class_weight: float) -> FloatArray:
    """Undo positive-class weighting on the logit scale: odds ÷ w, i.e. p = p_w / (p_w + w(1 − p_w))."""
    return np.asarray(raw, dtype=np.float64) - math.log(positive_class_weight)


# ---------------------------------------------------------------------------------------------- bundle


@dataclass
class ModelBundle:
    """A loaded bundle; see module doc. Build with :func:`load_bundle`."""

    path: Path
    booster: lgb.Booster
    spec: dict[str, Any]
    feature_names: list[str]
    calibration: dict[str, Any]
    threshold_info: dict[str, Any]
    reference: dict[str, Any]
    metrics: dict[str, Any]
    metadata: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def categories(self) -> dict[str, list[str]]:
        """Categorical levels (spec order; code = index) of the model's categorical features."""
        cats: dict[str, list[str]] = self.spec.get("categories") or {}
        return {k: v for k, v in cats.items() if k in self.feature_names}

    @property
    def threshold(self) -> float:
        """Decision threshold τ on the calibrated probability (alert = p ≥ τ)."""
        return float(self.threshold_info["value"])

    @property
    def threshold_probability(self) -> float:
        """The net-benefit threshold probability p_t the bundle's τ was chosen for (τ may differ from p_t
        under an alert capacity). Frozen at training: evaluation and promotion read it from here."""
        return float(self.threshold_info["threshold_probability"])

    @property
    def version(self) -> str:
        """Content hash of the bundle (metadata.json ``bundle_version``)."""
        return str(self.metadata["bundle_version"])

    @property
    def positive_class_weight(self) -> float:
        return float(self.metadata.get("positive_class_weight", 1.0))

    def to_matrix(self, features: pl.DataFrame | np.ndarray | Any) -> npt.NDArray[np.float32]:
        """Model input matrix from a polars/pandas frame (by column name) or an ndarray (feature order)."""
        if isinstance(features, np.ndarray):
            if features.ndim != 2 or features.shape[1] != len(self.feature_names):
                raise DataError(
                    f"features: expected a 2-D array with {len(self.feature_names)} columns "
                    f"({self.feature_names}), got shape {features.shape}"
                )
            return np.ascontiguousarray(features, dtype=np.float32)
        if not isinstance(features, pl.DataFrame):
            try:
                features = pl.from_pandas(features)
            except (TypeError, ValueError) as exc:
                raise DataError(f"features: expected a polars/pandas DataFrame or ndarray ({exc})") from None
        return features_to_matrix(features, self.feature_names, self.categories)

    def predict_raw(self, features: pl.DataFrame | np.ndarray | Any) -> FloatArray:
        """LightGBM raw margin (logit of the possibly class-weighted model), before any correction."""
        X = self.to_matrix(features)
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self.booster.predict(X, raw_score=True), dtype=np.float64)

    def predict_logit(self, features: pl.DataFrame | np.ndarray | Any) -> FloatArray:
        """Odds-corrected logit (input of the calibration map)."""
        return odds_correct_logit(self.predict_raw(features), self.positive_class_weight)

    def predict_proba(self, features: pl.DataFrame | np.ndarray | Any) -> FloatArray:
        """Calibrated, odds-corrected probability of the positive class, one per row."""
        return apply_calibration(self.calibration, self.predict_logit(features))

    def predict_contrib(self, features: pl.DataFrame | np.ndarray | Any) -> FloatArray:
        """TreeSHAP contributions on the raw-margin scale: (n, n_features + 1), last column = bias."""
        X = self.to_matrix(features)
        return np.asarray(self.booster.predict(X, pred_contrib=True), dtype=np.float64)


def _read_json_file(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"bundle file {path.name} missing ({path})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"bundle file {path.name}: not valid JSON ({exc})") from None


def _require_keys(name: str, obj: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(obj, dict):
        raise DataError(f"bundle file {name}: expected a JSON object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"bundle file {name}: missing key(s) {missing}")


def load_bundle(path: str | Path) -> ModelBundle:
    """Load and validate a bundle directory; any missing/corrupt file is a DataError naming it."""
    import lightgbm as lgb

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"bundle directory {root}: not found")
    for name in BUNDLE_FILES:
        if not (root / name).is_file():
            raise DataError(f"bundle file {name} missing in {root}")
    spec = _read_json_file(root / SPEC_FILE)
    _require_keys(SPEC_FILE, spec, ("feature_names",))
    calibration = _read_json_file(root / CALIBRATION_FILE)
    try:
        validate_calibration(calibration)
    except DataError as exc:
        raise DataError(f"bundle file {CALIBRATION_FILE}: {exc}") from None
    threshold = _read_json_file(root / THRESHOLD_FILE)
    _require_keys(THRESHOLD_FILE, threshold, ("value", "method", "reason", "threshold_probability"))
    if not 0.0 < float(threshold["value"]) < 1.0:
        raise DataError(f"bundle file {THRESHOLD_FILE}: value {threshold['value']} not in (0, 1)")
    reference = _read_json_file(root / REFERENCE_FILE)
    _require_keys(REFERENCE_FILE, reference, ("features", "score"))
    metrics = _read_json_file(root / METRICS_FILE)
    metadata = _read_json_file(root / METADATA_FILE)
    _require_keys(
        METADATA_FILE,
        metadata,
        ("bundle_version", "feature_names", "positive_class_weight", "label_strategy"),
    )
    try:
        config = yaml.safe_load((root / CONFIG_FILE).read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"bundle file {CONFIG_FILE}: not valid YAML ({exc})") from None
    try:
        booster = lgb.Booster(model_file=str(root / MODEL_FILE))
    except lgb.basic.LightGBMError as exc:
        raise DataError(f"bundle file {MODEL_FILE}: not a LightGBM model ({exc})") from None
    names = list(metadata["feature_names"])
    if booster.feature_name() != names:
        raise DataError(
            f"bundle file {MODEL_FILE}: model features {booster.feature_name()} differ from "
            f"{METADATA_FILE} feature_names {names}"
        )
    not_in_spec = [n for n in names if n not in spec["feature_names"]]
    if not_in_spec:
        raise DataError(f"bundle file {SPEC_FILE}: model features {not_in_spec} not in the feature spec")
    return ModelBundle(
        path=root,
        booster=booster,
        spec=spec,
        feature_names=names,
        calibration=calibration,
        threshold_info=threshold,
        reference=reference,
        metrics=metrics,
        metadata=metadata,
        config=config,
    )


# --------------------------------------------------------------------------------------------- writing


def content_hash(root: Path, exclude: tuple[str, ...] = (METADATA_FILE, METRICS_FILE)) -> str:
    """sha256 over (name, bytes) of the files that define the model's predictions and decisions.

    metadata.json (carries the hash and the time) and metrics.json (evaluation adds test metrics later)
    are excluded, so the version identifies what the model does, not when or how well it was scored.
    """
    from clinrisk.io import sha256_file

    h = hashlib.sha256()
    for name in sorted(BUNDLE_FILES):
        if name in exclude or not (root / name).is_file():
            continue
        h.update(name.encode())
        h.update(sha256_file(root / name).encode())
    return h.hexdigest()


def git_sha() -> str:
    """Commit of the source tree, or "unknown" outside a git checkout."""
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = res.stdout.strip()
    return sha if res.returncode == 0 and sha else "unknown"


def write_bundle(
    out_dir: Path,
    *,
    model_text: str,
    spec: dict[str, Any],
    feature_names: list[str],
    calibration: dict[str, Any],
    threshold: dict[str, Any],
    reference: dict[str, Any],
    metrics: dict[str, Any],
    cfg: ClinriskConfig,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Write every bundle file into ``out_dir`` (callers wrap it in atomic_output_dir); returns metadata."""
    from clinrisk import __version__
    from clinrisk.config import save_config
    from clinrisk.io import write_json

    out = Path(out_dir)
    (out / MODEL_FILE).write_text(model_text)
    write_json(out / SPEC_FILE, spec)
    write_json(out / CALIBRATION_FILE, calibration)
    write_json(out / THRESHOLD_FILE, threshold)
    write_json(out / REFERENCE_FILE, reference)
    write_json(out / METRICS_FILE, metrics)
    save_config(cfg, out / CONFIG_FILE)
    meta = {
        "clinrisk_version": __version__,
        "git_sha": git_sha(),
        "feature_names": list(feature_names),
        **metadata,
    }
    meta["created_utc"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    write_json(out / METADATA_FILE, {**meta, "bundle_version": "pending"})
    meta["bundle_version"] = content_hash(out)[:16]
    write_json(out / METADATA_FILE, meta)
    return meta


def update_metrics(bundle_dir: Path, section: str, values: dict[str, Any]) -> None:
    """Add or replace a section of metrics.json (e.g. "test" after evaluation); the version is unchanged."""
    from clinrisk.io import read_json, write_json

    root = Path(bundle_dir)
    metrics = read_json(root / METRICS_FILE)
    metrics[section] = values
    write_json(root / METRICS_FILE, metrics)
