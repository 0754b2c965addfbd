"""MLflow tracking and model registry for clinrisk runs.

Local default (tiers 1 and 2): sqlite backend ``sqlite:///<run_dir>/mlflow/mlflow.db`` with artifacts in
``<run_dir>/mlflow/artifacts``; ``tracking.tracking_uri`` points at a server instead (tier 3). Every
function takes an explicit ``run_id`` so the steps of one pipeline run — separate processes or pods — log
into the same MLflow run. The bundle is registered as a pyfunc model whose ``predict`` is
:meth:`clinrisk.bundle.ModelBundle.predict_proba`, and the new version gets the alias ``challenger``
(aliases, not the deprecated stages).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinrisk.errors import ConfigError, DataError

if TYPE_CHECKING:
    from mlflow.pyfunc import PythonModel

    from clinrisk.config import ClinriskConfig

CHALLENGER = "challenger"
CHAMPION = "champion"
MODEL_ARTIFACT = "model"
BUNDLE_ARTIFACT_KEY = "bundle"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def _run_dir(cfg: ClinriskConfig, run_dir: Path | None) -> Path:
    from clinrisk.paths import RunPaths

    return Path(run_dir) if run_dir is not None else RunPaths.for_config(cfg).root


def tracking_uri(cfg: ClinriskConfig, run_dir: Path | None = None) -> str:
    """``tracking.tracking_uri`` or the local sqlite store under ``<run_dir>/mlflow``."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    db = (_run_dir(cfg, run_dir) / "mlflow").resolve() / "mlflow.db"
    return f"sqlite:///{db}"


def configure(cfg: ClinriskConfig, run_dir: Path | None = None) -> str:
    """Point MLflow at this run's store, create the experiment if needed; returns the experiment id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if not cfg.tracking.enabled:
        raise ConfigError("tracking.enabled: MLflow tracking is disabled in this config")
    uri = tracking_uri(cfg, run_dir)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri)
    name = cfg.tracking.experiment_name
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if uri.startswith("sqlite:///"):  # local store: artifacts next to the db, never MLflow's ./mlruns default
        art = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve()
        art.mkdir(parents=True, exist_ok=True)
        location = art.as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def mlflow_client() -> Any:
    """The MLflow client for the configured tracking/registry URIs (call :func:`configure` first)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def start_run(
    cfg: ClinriskConfig,
    run_dir: Path | None = None,
    tags: dict[str, str] | None = None,
    kfp_run_id: str | None = None,
    run_name: str | None = None,
) -> str:
    """Create an MLflow run (not left active in this process) and return its id."""
    exp_id = configure(cfg, run_dir)
    all_tags = {"clinrisk.run_name": cfg.run.name, "clinrisk.label_strategy": cfg.labels.strategy}
    if kfp_run_id:
        all_tags["kfp.run_id"] = kfp_run_id
    all_tags.update(tags or {})
    run = mlflow_client().create_run(exp_id, tags=all_tags, run_name=run_name or cfg.run.name)
    return str(run.info.run_id)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Mark the run finished (or FAILED / KILLED)."""
    mlflow_client().set_terminated(run_id, status=status)


def log_config(cfg: ClinriskConfig, run_id: str) -> int:
    """Log the full flattened config as params (values cut to MLflow's 6000 characters); returns count."""
    from mlflow.entities import Param

    from clinrisk.config import config_hash, flatten_config

    flat = flatten_config(cfg)
    params = [
        Param(k, v if len(v) <= MAX_PARAM_CHARS else v[: MAX_PARAM_CHARS - 3] + "...")
        for k, v in flat.items()
    ]
    client = mlflow_client()
    for i in range(0, len(params), 100):  # MLflow batches accept at most 100 params
        client.log_batch(run_id, params=params[i : i + 100])
    client.set_tag(run_id, "clinrisk.config_hash", config_hash(cfg))
    return len(params)


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as ``a.b.c -> float`` (lists, strings, NaN/inf skipped)."""
    import math

    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten_metrics(v, key))
        elif isinstance(v, bool) or (isinstance(v, int | float) and math.isfinite(float(v))):
            out[key] = float(v)
    return out


def log_metrics(metrics: dict[str, Any], run_id: str, prefix: str = "", step: int | None = None) -> int:
    """Log the numeric leaves of a (nested) metrics dict; returns how many were logged."""
    import time

    from mlflow.entities import Metric

    flat = flatten_metrics(metrics, prefix)
    ts = int(time.time() * 1000)
    items = [Metric(k, v, ts, step or 0) for k, v in flat.items()]
    client = mlflow_client()
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])
    return len(items)


def log_artifacts(local_dir: Path, artifact_path: str | None, run_id: str) -> None:
    """Upload a directory's files under ``artifact_path`` of the run."""
    if not Path(local_dir).is_dir():
        raise DataError(f"{local_dir}: artifact directory not found")
    mlflow_client().log_artifacts(run_id, str(local_dir), artifact_path)


def log_to_run(
    cfg: ClinriskConfig,
    run_id: str,
    metrics: dict[str, Any] | None = None,
    artifacts: dict[str, Path] | None = None,
    prefix: str = "",
    run_dir: Path | None = None,
) -> None:
    """One call for a pipeline step in its own process: point at the store, log metrics and artifact dirs.

    ``artifacts`` maps an artifact path in the run to a local directory.
    """
    configure(cfg, run_dir)
    if metrics:
        log_metrics(metrics, run_id, prefix=prefix)
    for artifact_path, local in (artifacts or {}).items():
        log_artifacts(Path(local), artifact_path, run_id)


def _pyfunc_class() -> type[PythonModel]:
    from mlflow.pyfunc import PythonModel

    class ClinriskModel(PythonModel):
        """pyfunc wrapper: pandas frame of feature columns in, calibrated probabilities out."""

        def load_context(self, context: Any) -> None:
            from clinrisk.bundle import load_bundle

            self.bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT_KEY])

        # No type hints here on purpose: MLflow would try to derive a (list-based) schema from them.
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return self.bundle.predict_proba(model_input)

    return ClinriskModel


def _signature(bundle: Any) -> Any:
    """Input schema: categoricals as strings (level names), everything else double (nullable)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    cols: list[ColSpec | TensorSpec] = [
        ColSpec("string" if n in bundle.categories else "double", n, required=True)
        for n in bundle.feature_names
    ]
    return ModelSignature(inputs=Schema(cols), outputs=Schema([TensorSpec(np.dtype("float64"), (-1,))]))


def register_bundle(
    cfg: ClinriskConfig,
    bundle_dir: Path,
    run_id: str,
    alias: str = CHALLENGER,
    run_dir: Path | None = None,
) -> str:
    """Log the bundle as a pyfunc model in ``run_id``, register it, set ``alias`` on the new version."""
    import mlflow
    import mlflow.pyfunc

    from clinrisk import __version__
    from clinrisk.bundle import load_bundle

    bundle = load_bundle(bundle_dir)  # refuse to register an invalid bundle
    configure(cfg, run_dir)
    name = cfg.tracking.registered_model_name
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=_pyfunc_class()(),
            artifacts={BUNDLE_ARTIFACT_KEY: str(Path(bundle_dir).resolve())},
            signature=_signature(bundle),
            # Pinned requirements instead of inference (slow, and it imports the world).
            pip_requirements=[f"clinrisk=={__version__}", "lightgbm>=4.6,<4.8", "polars>=2.1,<2.2"],
            registered_model_name=name,
            metadata={"bundle_version": bundle.version},
        )
    version = str(info.registered_model_version)
    client = mlflow_client()
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "bundle_version", bundle.version)
    client.set_model_version_tag(name, version, "data_hash", str(bundle.metadata.get("data_hash", "")))
    return version


def set_alias(cfg: ClinriskConfig, alias: str, version: str, run_dir: Path | None = None) -> None:
    """Point ``alias`` (e.g. champion after a promotion) at a registered version."""
    configure(cfg, run_dir)
    mlflow_client().set_registered_model_alias(cfg.tracking.registered_model_name, alias, str(version))


def model_uri(cfg: ClinriskConfig, alias_or_version: str) -> str:
    """``models:/<name>/<version>`` for digits, else ``models:/<name>@<alias>``."""
    name = cfg.tracking.registered_model_name
    ref = str(alias_or_version)
    return f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"


def _bundle_path_in_model(mlmodel_text: str, where: str) -> str:
    """The bundle's path inside a logged clinrisk pyfunc model, read from its MLmodel file."""
    import yaml

    try:
        conf = yaml.safe_load(mlmodel_text)
        return str(conf["flavors"]["python_function"]["artifacts"][BUNDLE_ARTIFACT_KEY]["path"])
    except (KeyError, TypeError, yaml.YAMLError):
        raise DataError(f"{where}: not a clinrisk model (no '{BUNDLE_ARTIFACT_KEY}' artifact)") from None


def bundle_storage_uri(cfg: ClinriskConfig, alias_or_version: str, run_dir: Path | None = None) -> str:
    """Where the registered version's bundle directory lives in the artifact store (``s3://…`` with MinIO).

    KServe's storage initializer cannot read ``models:/`` URIs; an InferenceService needs the storage
    location of the bundle itself, which is ``<model download URI>/<bundle path from MLmodel>``.
    """
    import tempfile

    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    configure(cfg, run_dir)
    client = mlflow_client()
    name = cfg.tracking.registered_model_name
    ref = str(alias_or_version)
    where = model_uri(cfg, ref)
    try:
        version = ref if ref.isdigit() else str(client.get_model_version_by_alias(name, ref).version)
        root = str(client.get_model_version_download_uri(name, version)).rstrip("/")
        with tempfile.TemporaryDirectory(prefix="clinrisk-mlmodel-") as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/MLmodel", dst_path=tmp)
            text = Path(local).read_text()
    except MlflowException as exc:
        raise DataError(f"{where}: cannot resolve registered model ({exc.message})") from None
    return f"{root}/{_bundle_path_in_model(text, where).strip('/')}"


MODEL_URI_RE = re.compile(
    r"^models:/(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$"
)


def parse_model_uri(uri: str) -> tuple[str, str]:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> (name, alias or version)."""
    m = MODEL_URI_RE.match(uri.strip())
    if not m:
        raise ConfigError(f"--model-uri {uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return m["name"], m["alias"] or m["version"]


def resolve_storage_uri(cfg: ClinriskConfig, uri: str, run_dir: Path | None = None) -> str:
    """A ``models:/`` registry URI becomes its bundle's storage URI; any other URI is returned as given."""
    if not uri.startswith("models:/"):
        return uri
    name, ref = parse_model_uri(uri)
    named = cfg.model_copy(deep=True)
    named.tracking.registered_model_name = name
    return bundle_storage_uri(named, ref, run_dir=run_dir)


def resolve_model(
    cfg: ClinriskConfig,
    alias_or_version: str = CHALLENGER,
    dest: Path | None = None,
    run_dir: Path | None = None,
) -> Path:
    """Download a registered model and return its local bundle directory (for serving)."""
    import tempfile

    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    configure(cfg, run_dir)
    uri = model_uri(cfg, alias_or_version)
    target = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="clinrisk-model-"))
    target.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    except MlflowException as exc:
        raise DataError(f"{uri}: cannot resolve registered model ({exc.message})") from None
    mlmodel = local / "MLmodel"
    if not mlmodel.is_file():
        raise DataError(f"{uri}: downloaded model has no MLmodel file")
    bundle_dir = local / _bundle_path_in_model(mlmodel.read_text(), uri)
    from clinrisk.bundle import load_bundle

    load_bundle(bundle_dir)  # validate before handing it to serving
    return bundle_dir
