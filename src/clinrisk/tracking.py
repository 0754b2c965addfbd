"""MLflow tracking and model registry for clinrisk runs.

Local default (tiers 1 and 2): sqlite backend ``sqlite:///<run_dir>/mlflow/mlflow.db`` with artifacts in
``<run_dir>/mlflow/artifacts``; ``tracking.tracking_uri`` points at a server instead (tier 3). Every
function takes an explicit ``run_id`` so the steps of one pipeline run — separate processes or pods — log
into the same MLflow run. Registration (the pyfunc model, atomic and
idempotent versions) is :mod:`clinrisk.registry`; aliases, not the deprecated stages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinrisk.errors import ConfigError, DataError

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig

CHALLENGER = "challenger"
CHAMPION = "champion"
MODEL_ARTIFACT = "model"
BUNDLE_ARTIFACT_KEY = "bundle"  # the bundle's key among the pyfunc model's artifacts
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


_CHECKED_SERVERS: set[str] = set()


def check_tracking_server(uri: str, timeout_s: float = 10.0) -> None:
    """One API call to an HTTP tracking server, so a dead or misconfigured one fails at once with one line.

    The MLflow client would otherwise retry for minutes; and ``/health`` is no proof, since MLflow 3 answers
    it even when its Host check (``--allowed-hosts``) rejects every API call with 403.
    """
    import os

    import requests

    if not uri.startswith(("http://", "https://")) or uri in _CHECKED_SERVERS:
        return
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    try:
        resp = requests.get(
            f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": "clinrisk-connection-check"},
            auth=(user, password) if user and password else None,
            timeout=timeout_s,
        )
    except requests.RequestException as exc:
        reason = str(exc.__context__ or exc).splitlines()[0][:200]
        raise DataError(f"tracking server {uri}: unreachable ({type(exc).__name__}: {reason})") from None
    if resp.status_code == 403 and "Invalid Host header" in resp.text:
        raise DataError(
            f"tracking server {uri}: 403 Invalid Host header (the server's --allowed-hosts does not list "
            f"{uri.split('://', 1)[1].split('/', 1)[0]})"
        )
    if resp.status_code in (401, 403):
        raise DataError(f"tracking server {uri}: {resp.status_code} credentials rejected")
    if resp.status_code not in (200, 404):  # 404: RESOURCE_DOES_NOT_EXIST, the API answered
        raise DataError(f"tracking server {uri}: HTTP {resp.status_code} from the API ({resp.text[:120]!r})")
    _CHECKED_SERVERS.add(uri)


def configure(cfg: ClinriskConfig, run_dir: Path | None = None) -> str:
    """Point MLflow at this run's store, create the experiment if needed; returns the experiment id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if not cfg.tracking.enabled:
        raise ConfigError("tracking.enabled: MLflow tracking is disabled in this config")
    uri = tracking_uri(cfg, run_dir)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    check_tracking_server(uri)
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
    tags = {NOTE_TAG: experiment_description(cfg)}
    return str(client.create_experiment(name, artifact_location=location, tags=tags))


NOTE_TAG = "mlflow.note.content"
PIPELINE_SOURCE = "clinrisk-training pipeline (pipelines/training.py)"  # the description MLflow's UI shows for a run or an experiment


def experiment_description(cfg: ClinriskConfig) -> str:
    """What the experiment holds, for MLflow's experiment page."""
    return (
        f"clinrisk use case `{cfg.run.usecase}`: one MLflow run per training pipeline run (config as "
        f"params, `validation.*` metrics from training, `test.*` from the held-out test split, the "
        f"evaluation and validation reports as artifacts). Models are registered as "
        f"`{cfg.tracking.registered_model_name}`: `@challenger` is the newest registered model, "
        f"`@champion` the one that passed the promotion gate (the first one becomes champion)."
    )


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
    """Create an MLflow run (not left active in this process) and return its id.

    Tags: source (``tags`` may set ``mlflow.source.name``/``type``), git commit, user and package version
    (:func:`source_tags`), a first description, the KFP run id when given.
    """
    from clinrisk.config import config_hash

    exp_id = configure(cfg, run_dir)
    all_tags = {
        "clinrisk.run_name": cfg.run.name,
        "clinrisk.usecase": cfg.run.usecase,
        "clinrisk.label_strategy": cfg.labels.strategy,
        # A KFP run id means the pipeline's start-tracking step; otherwise a CLI command.
        **(source_tags(PIPELINE_SOURCE, "JOB") if kfp_run_id else source_tags()),
        NOTE_TAG: (
            f"Training run `{cfg.run.name}` of use case `{cfg.run.usecase}` (config hash "
            f"`{config_hash(cfg)[:12]}`). The test result and the registered version are added here when "
            f"evaluation and registration finish."
        ),
    }
    if kfp_run_id:
        all_tags["kfp.run_id"] = kfp_run_id
    all_tags.update(tags or {})
    run = mlflow_client().create_run(exp_id, tags=all_tags, run_name=run_name or cfg.run.name)
    return str(run.info.run_id)


def source_tags(source_name: str = "clinrisk", source_type: str = "LOCAL") -> dict[str, str]:
    """MLflow's system tags for where a run comes from: source name and type, user, git commit and branch
    (when the package runs from a git checkout, or ``$CLINRISK_GIT_COMMIT`` as set by an image build),
    and the clinrisk version (always; the only code identity outside a checkout)."""
    import getpass
    import os

    from clinrisk import __version__

    tags = {
        "mlflow.source.name": source_name,
        "mlflow.source.type": source_type,
        "clinrisk.version": __version__,
    }
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (some containers)
        tags["mlflow.user"] = os.environ.get("USER", "unknown")
    git = git_info()
    commit = os.environ.get("CLINRISK_GIT_COMMIT") or git.get("commit")
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if git.get("branch"):
        tags["mlflow.source.git.branch"] = git["branch"]
    if git.get("dirty"):
        tags["clinrisk.git.dirty"] = git["dirty"]
    return tags


def git_info() -> dict[str, str]:
    """Commit, branch and dirty flag of the git checkout the clinrisk package runs from ({} outside one)."""
    import shutil
    import subprocess

    import clinrisk

    root = Path(clinrisk.__file__).resolve().parents[2]
    if not (root / ".git").exists() or shutil.which("git") is None:
        return {}

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD")
        if not commit:
            return {}
        out = {"commit": commit, "branch": git("rev-parse", "--abbrev-ref", "HEAD")}
        out["dirty"] = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
        return out
    except (OSError, subprocess.SubprocessError):
        return {}


def set_description(run_id: str, text: str) -> None:
    """The run's description (Markdown) on MLflow's run page."""
    mlflow_client().set_tag(run_id, NOTE_TAG, text)


def headline_description(cfg: ClinriskConfig, headline: dict[str, Any], registered: str | None = None) -> str:
    """One paragraph with the run's headline: test metrics against recorded and true labels, and the
    registered version when there is one."""
    import math

    def fmt(key: str) -> str | None:
        v = headline.get(key)
        return f"{float(v):.4f}" if isinstance(v, int | float) and math.isfinite(float(v)) else None

    parts = []
    for metric, label in (("auc", "AUC"), ("ap", "AP"), ("brier", "Brier")):
        rec, true = fmt(f"recorded_{metric}"), fmt(f"true_{metric}")
        if rec or true:
            parts.append(f"{label} {rec or 'n/a'} (true labels {true or 'n/a'})")
    text = f"**Test split** ({cfg.run.usecase}, run `{cfg.run.name}`): " + (
        "; ".join(parts) if parts else "no headline metrics"
    )
    gap = fmt("auc_gap_expected")
    if gap:
        text += f". Expected AUC gap to the oracle: {gap}"
    text += "."
    if registered:
        text += f"\n\n**Registered** as {registered}."
    return text


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


# What a run may carry from the evaluation folder: reports, plots and small JSON. Row-level outputs
# (predictions.parquet, with patient ids and true labels) stay on disk; the registry holds no patient data.
REPORT_SUFFIXES = (".md", ".json", ".png", ".svg", ".html")


def log_report_files(
    local_dir: Path, artifact_path: str, run_id: str, suffixes: tuple[str, ...] = REPORT_SUFFIXES
) -> list[str]:
    """Upload the report files (``suffixes``) under ``local_dir`` to ``artifact_path``; returns the relative
    paths left out."""
    root = Path(local_dir)
    if not root.is_dir():
        raise DataError(f"{root}: report directory not found")
    client = mlflow_client()
    skipped: list[str] = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root)
        if f.suffix.lower() not in suffixes:
            skipped.append(str(rel))
            continue
        dest = "/".join([artifact_path, *rel.parent.parts])
        client.log_artifact(run_id, str(f), dest)
    return skipped


def log_file(local_file: Path, artifact_path: str, run_id: str) -> None:
    """Upload one file under ``artifact_path`` of the run."""
    if not Path(local_file).is_file():
        raise DataError(f"{local_file}: file not found")
    mlflow_client().log_artifact(run_id, str(local_file), artifact_path)


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


def error_line(exc: BaseException) -> str:
    """The first line of an MLflow/HTTP error, which carries the failing URL or S3 error code."""
    text = str(getattr(exc, "message", "") or exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def set_alias(cfg: ClinriskConfig, alias: str, version: str, run_dir: Path | None = None) -> None:
    """Point ``alias`` (e.g. champion after a promotion) at a registered version."""
    configure(cfg, run_dir)
    mlflow_client().set_registered_model_alias(cfg.tracking.registered_model_name, alias, str(version))


def model_uri(cfg: ClinriskConfig, alias_or_version: str) -> str:
    """``models:/<name>/<version>`` for digits, else ``models:/<name>@<alias>``."""
    name = cfg.tracking.registered_model_name
    ref = str(alias_or_version)
    return f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"


def bundle_path_in_model(mlmodel_text: str, where: str) -> str:
    """The bundle's path inside a logged clinrisk pyfunc model, read from its MLmodel file."""
    import yaml

    try:
        conf = yaml.safe_load(mlmodel_text)
        return str(conf["flavors"]["python_function"]["artifacts"][BUNDLE_ARTIFACT_KEY]["path"])
    except (KeyError, TypeError, yaml.YAMLError):
        raise DataError(f"{where}: not a clinrisk model (no '{BUNDLE_ARTIFACT_KEY}' artifact)") from None


# Schemes KServe's storage initializer (kserve_storage.Storage.download) reads as they are.
KSERVE_STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "hdfs://", "webhdfs://", "oci://", "hf://")


def kserve_storage_uri(
    artifact_uri: str, artifacts_destination: str | None = None, resolve_models: Any = None
) -> str:
    """Map an MLflow artifact location to a URI KServe's storage initializer can download.

    - ``mlflow-artifacts:/<path>`` (or ``mlflow-artifacts://host:port/<path>``): the tracking server proxies
      these to ``<artifacts_destination>/<path>``, so the storage URI is that (``s3://mlflow/1/models/…``).
    - ``s3://``, ``gs://`` (and the initializer's other remote schemes): unchanged.
    - ``file:///p`` or ``/p``: unchanged; the initializer reads local paths (tiers 1 and 2, or a volume
      mounted at the same path).
    - ``models:/m-<id>…`` (a logged model): ``resolve_models`` maps it to its artifact location, which is
      then mapped again.
    """
    from urllib.parse import urlparse

    uri = str(artifact_uri).rstrip("/")
    if uri.startswith(KSERVE_STORAGE_SCHEMES):
        return uri
    if uri.startswith("mlflow-artifacts:"):
        path = urlparse(uri).path.lstrip("/")
        if not artifacts_destination:
            raise ConfigError(
                f"tracking.artifacts_destination: not set, but the tracking server proxies artifacts ({uri}); "
                "set it to the server's --artifacts-destination (e.g. s3://mlflow)"
            )
        dest = str(artifacts_destination).rstrip("/")
        if dest.startswith("mlflow-artifacts:"):
            raise ConfigError(
                f"tracking.artifacts_destination {dest!r}: must be the store itself (s3://, gs://)"
            )
        return kserve_storage_uri(f"{dest}/{path}" if path else dest)
    if uri.startswith(("file:/", "/")):
        return uri
    if uri.startswith("models:/") and resolve_models is not None:
        return kserve_storage_uri(str(resolve_models(uri)), artifacts_destination)
    raise DataError(f"{uri}: artifact location has no scheme KServe's storage initializer can read")


def bundle_storage_uri(cfg: ClinriskConfig, alias_or_version: str, run_dir: Path | None = None) -> str:
    """Where the registered version's bundle directory lives, as a URI KServe's storage initializer reads.

    KServe's storage initializer cannot read ``models:/`` URIs; an InferenceService needs the storage
    location of the bundle itself, which is ``<model download URI>/<bundle path from MLmodel>`` mapped by
    :func:`kserve_storage_uri` (MLflow 3 with a proxying server returns ``mlflow-artifacts:/…``).
    """
    import tempfile

    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    configure(cfg, run_dir)
    client = mlflow_client()
    name = cfg.tracking.registered_model_name
    ref = str(alias_or_version)
    where = model_uri(cfg, ref)

    def logged_model_location(uri: str) -> str:
        model_id, _, rest = uri.removeprefix("models:/").partition("/")
        location = str(client.get_logged_model(model_id).artifact_location).rstrip("/")
        return f"{location}/{rest}" if rest else location

    try:
        version = ref if ref.isdigit() else str(client.get_model_version_by_alias(name, ref).version)
        root = str(client.get_model_version_download_uri(name, version)).rstrip("/")
        with tempfile.TemporaryDirectory(prefix="clinrisk-mlmodel-") as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/MLmodel", dst_path=tmp)
            text = Path(local).read_text()
        location = f"{root}/{bundle_path_in_model(text, where).strip('/')}"
        return kserve_storage_uri(location, cfg.tracking.artifacts_destination, logged_model_location)
    except MlflowException as exc:
        raise DataError(f"{where}: cannot resolve registered model ({exc.message})") from None


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
    bundle_dir = local / bundle_path_in_model(mlmodel.read_text(), uri)
    from clinrisk.bundle import load_bundle

    load_bundle(bundle_dir)  # validate before handing it to serving
    return bundle_dir
