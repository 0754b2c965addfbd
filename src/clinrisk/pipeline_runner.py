"""Run, compile and submit the Kubeflow training pipeline (tier 1 and 2 locally, tier 3 on a cluster).

The DAG itself lives in ``pipelines/training.py``; this module only chooses a runner and passes the typed
config in as pipeline parameters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from clinrisk.config import ClinriskConfig, load_config
from clinrisk.errors import ConfigError, StageError
from clinrisk.images import pipeline_image
from clinrisk.paths import RunPaths

Runner = Literal["subprocess", "docker"]


@dataclass(frozen=True)
class LocalRunResult:
    """Where a local pipeline run left its outputs."""

    run_root: Path
    pipeline_dir: Path
    model_uri: str
    tracking_uri: str


def effective_local_config(config_path: Path | None, overrides: list[str]) -> ClinriskConfig:
    """Load the config and pin the paths a local run needs to absolute ones (components run elsewhere)."""
    cfg = load_config(config_path, overrides)
    out = Path(cfg.run.output_dir).resolve()
    cfg.run.output_dir = out
    if cfg.tracking.tracking_uri is None:
        cfg.tracking.tracking_uri = local_tracking_uri(cfg)
    return cfg


def local_tracking_uri(cfg: ClinriskConfig) -> str:
    """sqlite MLflow store under the run directory (tier 1/2 default)."""
    mlflow_dir = (RunPaths.for_config(cfg).mlflow).resolve()
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{mlflow_dir / 'mlflow.db'}"


def docker_run_args(cfg: ClinriskConfig, run_root: Path) -> dict[str, Any]:
    """``containers.run`` arguments for ``kfp.local.DockerRunner``: each task runs like a restricted pod.

    kfp mounts only the pipeline root (at the same path), so the MLflow store must live under it or be
    reachable over HTTP. The image's ENTRYPOINT (``clinrisk``) is reset because the KFP task command is
    a full argv, as on a cluster where the pod's ``command`` replaces the entrypoint.
    """
    uri = str(cfg.tracking.tracking_uri or "")
    store = local_store_path(uri)
    if store is not None and not store.resolve().is_relative_to(run_root.resolve()):
        raise ConfigError(
            f"tracking.tracking_uri: {uri!r} is outside the run directory {run_root}, the only host path "
            "the Docker runner mounts; leave it unset (a store under the run directory) or use a server"
        )
    return {
        "entrypoint": [""],
        "user": f"{os.getuid()}:{os.getgid()}",
        "read_only": True,
        "tmpfs": {"/tmp": "rw,exec,size=2g"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        # The steps need no network unless MLflow is a server (then the host's, e.g. a port-forward).
        "network_mode": "none" if store is not None else "host",
        # With a server, the caller's proxy settings travel too: in-cluster names such as
        # mlflow.mlflow.svc.cluster.local resolve only through the proxy that reaches them.
        "environment": {} if store is not None else server_client_env(),
    }


# Client-side variables a step needs to reach a tracking server the way the caller does.
SERVER_CLIENT_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def server_client_env() -> dict[str, str]:
    """The caller's proxy variables (unset ones left out), passed into each step's container."""
    return {k: os.environ[k] for k in SERVER_CLIENT_ENV if os.environ.get(k)}


def local_store_path(uri: str) -> Path | None:
    """Directory of a local MLflow store (``sqlite:///``, ``file://`` or a bare path); None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" not in uri:
        return Path(uri)
    return None


def ensure_docker_image(image: str) -> None:
    """Fail early, naming the fix, when no Docker engine answers or the pipeline image is absent."""
    try:
        import docker
        from docker.errors import DockerException, ImageNotFound
    except ImportError as exc:  # pragma: no cover - docker is a declared dependency
        raise StageError("--runner docker: the 'docker' Python package is not installed") from exc
    try:
        client = docker.from_env()
    except DockerException as exc:
        raise StageError(f"--runner docker: no Docker engine answers ({exc}); start Docker") from exc
    try:
        client.images.get(image)
    except ImageNotFound:
        try:
            client.images.pull(image)
        except DockerException as exc:
            raise StageError(
                f"--runner docker: pipeline image {image!r} is not present and could not be pulled ({exc}); "
                "build it with `make images` or set CLINRISK_PIPELINE_IMAGE"
            ) from exc
    finally:
        client.close()


def pipeline_arguments(cfg: ClinriskConfig, deploy: bool = False) -> dict[str, Any]:
    """Pipeline parameters: the whole effective config as YAML text (one source of truth) plus deploy knobs."""
    return {
        "config_yaml": yaml.safe_dump(cfg.to_dict(), sort_keys=False),
        "overrides": [],
        "deploy": deploy,
    }


def run_local(
    config_path: Path | None,
    overrides: list[str] | None = None,
    runner: Runner = "subprocess",
) -> LocalRunResult:
    """Run the training pipeline with ``kfp.local`` (SubprocessRunner, or DockerRunner in the pipeline image)."""
    import kfp.local
    from pipelines.training import PIPELINE_NAME, build_training_pipeline

    cfg = effective_local_config(config_path, list(overrides or []))
    run_root = RunPaths.for_config(cfg).root.resolve()
    run_root.mkdir(parents=True, exist_ok=True)
    if runner == "subprocess":
        kfp_runner: Any = kfp.local.SubprocessRunner(use_venv=False)
    elif runner == "docker":
        ensure_docker_image(pipeline_image())
        kfp_runner = kfp.local.DockerRunner(**docker_run_args(cfg, run_root))
    else:
        raise ConfigError(f"--runner: unknown runner {runner!r} (subprocess or docker)")
    kfp.local.init(runner=kfp_runner, pipeline_root=str(run_root), raise_on_error=True)
    before = set(run_root.glob(f"{PIPELINE_NAME}-*"))
    pipeline = build_training_pipeline(parallelism=cfg.run.workers)
    try:
        task = pipeline(**pipeline_arguments(cfg))
    except RuntimeError as exc:
        raise StageError(f"pipeline {PIPELINE_NAME} failed: {exc}") from exc
    created = sorted(set(run_root.glob(f"{PIPELINE_NAME}-*")) - before)
    if not created:
        raise StageError(f"pipeline {PIPELINE_NAME}: no run directory under {run_root}")
    pipeline_dir = created[-1]
    latest = run_root / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(pipeline_dir.name)
    return LocalRunResult(
        run_root=run_root,
        pipeline_dir=pipeline_dir,
        model_uri=str(task.output),
        tracking_uri=str(cfg.tracking.tracking_uri),
    )


def compile_pipeline(out_file: Path, parallelism: int = 2) -> Path:
    """Write the pipeline IR YAML (no server needed)."""
    from kfp import compiler
    from pipelines.training import build_training_pipeline

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_training_pipeline(parallelism), str(out_file))
    return out_file


def submit_pipeline(
    host: str,
    config_path: Path | None,
    overrides: list[str] | None = None,
    experiment: str | None = None,
    schedule: str | None = None,
    run_name: str | None = None,
    deploy: bool = False,
    package_dir: Path = Path("outputs/kfp"),
) -> str:
    """Submit a one-off run, or a recurring run when ``schedule`` (6-field cron) is given; returns its id."""
    import kfp

    cfg = load_config(config_path, list(overrides or []))
    package = compile_pipeline(Path(package_dir) / "clinrisk-training.yaml", parallelism=cfg.run.workers)
    arguments = pipeline_arguments(cfg, deploy=deploy)
    client = kfp.Client(host=host)
    name = run_name or f"{cfg.serving.model_name}-{cfg.run.name}"
    experiment = experiment or cfg.tracking.experiment_name
    if schedule:
        if len(schedule.split()) != 6:
            raise ConfigError(
                f"--schedule: {schedule!r} is not a 6-field cron (seconds first), e.g. '0 0 2 * * *'"
            )
        exp = client.create_experiment(name=experiment)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=name,
            cron_expression=schedule,
            pipeline_package_path=str(package),
            params=arguments,
        )
        return str(job.recurring_run_id)
    run = client.create_run_from_pipeline_package(
        str(package), arguments=arguments, run_name=name, experiment_name=experiment
    )
    return str(run.run_id)
