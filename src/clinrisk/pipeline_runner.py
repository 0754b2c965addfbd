"""Run, compile and submit the Kubeflow training pipeline (tier 1 and 2 locally, tier 3 on a cluster).

The DAG itself lives in ``pipelines/training.py``; this module only chooses a runner and passes the typed
config in as pipeline parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import yaml

from clinrisk import docker_exit, task_cache
from clinrisk import run_control as rc
from clinrisk.config import ClinriskConfig, load_config
from clinrisk.errors import ConfigError, StageError
from clinrisk.images import pipeline_image
from clinrisk.interrupts import DeferredStop, Interrupted, signal_handlers
from clinrisk.paths import RunPaths
from clinrisk.run_control import local_store_path
from clinrisk.run_progress import RootLogToRouter, TaskOutputRouter
from clinrisk.stages.shards import TASK_GROUPS_FILE

PIPELINE_NAME = "clinrisk-training"  # pipelines.training.PIPELINE_NAME (kfp.local names run folders by it)
ANSI = re.compile(r"\x1b\[[0-9;]*m")

Runner = Literal["subprocess", "docker"]


@dataclass(frozen=True)
class LocalRunResult:
    """Where a local pipeline run left its outputs."""

    run_root: Path
    pipeline_dir: Path
    model_uri: str
    tracking_uri: str
    run_id: str = ""


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


RUN_LABEL = "io.clinrisk.run-id"  # the Docker label on every task container of a run: its run id


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
        # kfp mounts only the pipeline root, which is now this run's own folder (runs/<run_id>/); the steps
        # also use the run root around it: the local MLflow store, the data cache, promotion records.
        "mounts": [_bind_mount(run_root.resolve())],
    }


def _bind_mount(path: Path) -> Any:
    """The host folder ``path`` at the same path in the task container, read-write (the pipeline root's
    own mount, which kfp adds, sits inside it)."""
    from docker.types import Mount

    return Mount(target=str(path), source=str(path), type="bind", read_only=False)


# Client-side variables a step needs to reach a tracking server the way the caller does.
SERVER_CLIENT_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def server_client_env() -> dict[str, str]:
    """The caller's proxy variables (unset ones left out), passed into each step's container."""
    return {k: os.environ[k] for k in SERVER_CLIENT_ENV if os.environ.get(k)}


def ensure_docker_image(
    image: str, how_to_build: str = "build it with `make images` or set CLINRISK_PIPELINE_IMAGE"
) -> None:
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
                f"{how_to_build}"
            ) from exc
    finally:
        client.close()


def pipeline_for(cfg: ClinriskConfig | None) -> tuple[str, Any]:
    """(pipeline name, builder) of the config's use case: the training pipeline, or for a use case with its
    own model family (``UseCase.model_family == "own"``) its own DAG, ``pipelines/<usecase>.py``
    (``PIPELINE_NAME`` + ``build_pipeline``, the same parameters and signature)."""
    import importlib

    from clinrisk.usecases import get

    if cfg is not None and get(cfg.run.usecase).model_family == "own":
        try:
            module = importlib.import_module(f"pipelines.{cfg.run.usecase}")
        except ModuleNotFoundError as exc:
            if exc.name != f"pipelines.{cfg.run.usecase}":
                raise
            raise ConfigError(
                f"use case {cfg.run.usecase!r}: it trains its own model and has no pipeline "
                f"(pipelines/{cfg.run.usecase}.py)"
            ) from None
        return str(module.PIPELINE_NAME), module.build_pipeline
    from pipelines.training import build_training_pipeline

    return PIPELINE_NAME, build_training_pipeline


def docker_images(cfg: ClinriskConfig) -> dict[str, str]:
    """Images the config's pipeline runs its tasks in, each with how to build it: the pipeline image, plus
    what a use case's own pipeline module lists in ``docker_images()`` (e.g. segmentation's JAX image)."""
    import importlib

    images = {pipeline_image(): "build it with `make images` or set CLINRISK_PIPELINE_IMAGE"}
    name, _ = pipeline_for(cfg)
    if name != PIPELINE_NAME:
        module = importlib.import_module(f"pipelines.{cfg.run.usecase}")
        images.update(getattr(module, "docker_images", dict)())
    return images


def pipeline_arguments(cfg: ClinriskConfig, deploy: bool = False) -> dict[str, Any]:
    """Pipeline parameters: the whole effective config as YAML text (one source of truth; it replaces the
    UI's named config, see clinrisk.pipeline_params) plus deploy knobs."""
    return {
        "usecase": cfg.run.usecase,
        "config_yaml": yaml.safe_dump(cfg.to_dict(), sort_keys=False),
        "overrides": [],
        "deploy": deploy,
    }


def run_local(
    config_path: Path | None,
    overrides: list[str] | None = None,
    runner: Runner = "subprocess",
    resume: str | None = None,
    verbose: bool = False,
    progress: TextIO | None = None,
) -> LocalRunResult:
    """Run the training pipeline with ``kfp.local`` (SubprocessRunner, or DockerRunner in the pipeline image).

    The run gets its id and folder (``<run root>/runs/<run_id>/``, its own kfp pipeline root) before it
    starts, holds the run root's lock throughout (:mod:`clinrisk.run_control`), and moves ``latest`` only
    when it succeeds. ``resume`` names an earlier run whose finished steps are reused (kfp.local's cache,
    checked against content hashes). SIGINT/SIGTERM stop every task process; the run is then recorded
    ``interrupted``, its MLflow run KILLED, and :class:`clinrisk.interrupts.Interrupted` is raised.
    Task output goes to ``runs/<run_id>/logs/`` and ``progress`` (default: stdout) gets one line per step,
    unless ``verbose``.
    """
    import kfp.local

    cfg = effective_local_config(config_path, list(overrides or []))
    pipeline_name, build_pipeline = pipeline_for(cfg)
    run_root = RunPaths.for_config(cfg).root.resolve()
    run_root.mkdir(parents=True, exist_ok=True)
    if runner not in ("subprocess", "docker"):
        raise ConfigError(f"--runner: unknown runner {runner!r} (subprocess or docker)")
    arguments = pipeline_arguments(cfg)
    config_sha = hashlib.sha256(arguments["config_yaml"].encode()).hexdigest()
    source = resolve_resume(run_root, resume, config_sha, pipeline_name) if resume else None
    run_id = rc.new_run_id()
    dirs = rc.RunDirs(run_root, run_id)
    tracking_uri = str(cfg.tracking.tracking_uri) if cfg.tracking.enabled else None
    store = local_store_path(tracking_uri) if tracking_uri else None
    with rc.locked_run(run_root, run_id, store):
        rc.recover_abandoned(run_root, tracking_uri)
        if tracking_uri:
            rc.init_store(tracking_uri)
        rc.write_record(
            dirs,
            status=rc.RUNNING,
            pid=os.getpid(),
            started=rc.now_iso(),
            config_sha256=config_sha,
            runner=runner,
            resumed_from=source.run_id if source else None,
            tracking_uri=tracking_uri,
        )
        reused = task_cache.seed(source.cache, dirs.cache) if source else 0
        if runner == "subprocess":
            kfp_runner: Any = kfp.local.SubprocessRunner(use_venv=False)
        else:
            for image, how_to_build in docker_images(cfg).items():
                ensure_docker_image(image, how_to_build)
            docker_args = docker_run_args(cfg, run_root)
            _add_env(docker_args, run_env(run_root, run_id))
            # The run's containers can be told apart from any other on the engine
            # (`docker ps --filter label=io.clinrisk.run-id=<run id>`).
            docker_args["labels"] = {RUN_LABEL: run_id}
            docker_exit.install()  # a fast-failing task's exit code must never read as 0
            kfp_runner = kfp.local.DockerRunner(**docker_args)
        kfp.local.init(
            runner=kfp_runner,
            pipeline_root=str(dirs.dir),
            raise_on_error=True,
            enable_caching=True,
            cache_root=str(dirs.cache),
        )
        out = progress if progress is not None else sys.stdout
        if not verbose:
            note = f" (resuming {source.run_id}: {reused} finished steps reusable)" if source else ""
            out.write(f"run {run_id}: logs in {dirs.logs}{note}\n")
        stop = DeferredStop(also_stop=lambda: rc.kill_processes(rc.run_processes(run_root, run_id)))
        router = TaskOutputRouter(
            dirs.logs,
            out,
            verbose=verbose,
            shard_total=lambda: plan_shard_count(dirs, pipeline_name),
            interrupted=lambda: stop.signum is not None,
        )
        failure: str | None = None
        task: Any = None
        # kfp.local starts a fresh Python process per task: the plan groups the shards into at most
        # run.workers tasks per fan-out (a compiled pipeline keeps one task per shard).
        # Likewise the training DAG runs generate + validate, and its model half, as one task each
        # (pipeline.fuse_local_steps).
        shape: dict[str, Any] = {"task_groups": cfg.run.workers}
        if pipeline_name == PIPELINE_NAME:
            shape["fuse_steps"] = cfg.pipeline.fuse_local_steps
        pipeline = build_pipeline(parallelism=cfg.run.workers, resources=cfg.pipeline.resources, **shape)
        try:
            with (
                signal_handlers(stop),
                _task_environment(run_root, run_id, own_tmpdir=runner == "subprocess"),
                quiet_runner(router),
            ):
                try:
                    task = pipeline(**arguments)
                except RuntimeError as exc:
                    failure = str(exc)
        except BaseException as exc:
            stop.close()
            # kfp.local's worker threads may still have tasks running: stop every process of this run.
            rc.kill_processes(rc.run_processes(run_root, run_id))
            if isinstance(exc, Interrupted | KeyboardInterrupt):  # a second signal: no more grace
                _finish_failed(dirs, tracking_uri, rc.INTERRUPTED, "KILLED", f"signal {exc}")
            elif stop.signum is not None and isinstance(exc, Exception):
                # kfp.local may trip over the tasks the signal stopped (e.g. a ValueError looking up the
                # output of a task it never finished): that is the interruption, not a bug of its own.
                # Its finished steps stay resumable: kfp.local wrote cache entries only for tasks that
                # succeeded, and every process is stopped, so their artefacts are final.
                task_cache.record_hashes(dirs.cache, dirs.dir, written_before=stop.at)
                _finish_failed(dirs, tracking_uri, rc.INTERRUPTED, "KILLED", f"signal {stop.signum}")
                raise Interrupted(stop.signum) from None
            else:
                _finish_failed(dirs, tracking_uri, rc.FAILED, "FAILED", f"the runner raised {exc!r}")
            raise
        finally:
            stop.close()
            router.close_files()
        pipeline_dir = _pipeline_dir(dirs, pipeline_name)
        if stop.signum is not None:
            task_cache.record_hashes(dirs.cache, dirs.dir, written_before=stop.at)
            _finish_failed(dirs, tracking_uri, rc.INTERRUPTED, "KILLED", f"signal {stop.signum}")
            raise Interrupted(stop.signum)
        if failure is not None or task is None:
            task_cache.record_hashes(dirs.cache, dirs.dir)
            _finish_failed(dirs, tracking_uri, rc.FAILED, "FAILED", failure or "no output")
            raise StageError(
                f"pipeline {pipeline_name} failed: {ANSI.sub('', failure or 'no output')} "
                f"(run {run_id}; task logs in {dirs.logs}; resume with --resume {run_id})"
            )
        if pipeline_dir is None:
            raise StageError(f"pipeline {pipeline_name}: no run directory under {dirs.dir}")
        model_uri = str(task.output)
        task_cache.record_hashes(dirs.cache, dirs.dir)  # any run can be resumed from, later
        rc.move_latest(run_root, pipeline_dir)
        rc.write_record(
            dirs,
            status=rc.SUCCEEDED,
            finished=rc.now_iso(),
            pipeline_dir=str(pipeline_dir),
            model_uri=model_uri,
        )
    return LocalRunResult(
        run_root=run_root,
        pipeline_dir=pipeline_dir,
        model_uri=model_uri,
        tracking_uri=str(cfg.tracking.tracking_uri),
        run_id=run_id,
    )


def run_env(run_root: Path, run_id: str) -> dict[str, str]:
    """What every task process of this run inherits (the real run id; orphan detection)."""
    return {rc.RUN_ID_ENV: run_id, rc.RUN_ROOT_ENV: str(run_root.resolve())}


@contextlib.contextmanager
def _task_environment(run_root: Path, run_id: str, own_tmpdir: bool = False) -> Iterator[None]:
    """Put :func:`run_env` into os.environ for the run (kfp.local's SubprocessRunner passes it on).

    With ``own_tmpdir``, the tasks also get a TMPDIR of their own that is removed when the run ends, however
    it ends: every KFP lightweight component starts with ``mktemp -d`` for its source file and never removes
    it, which in a container vanishes with the container but on this machine leaves one folder per task run
    in /tmp. It sits in the system temp folder (not the run folder) to keep socket paths short."""
    env = run_env(run_root, run_id)
    scratch = Path(tempfile.mkdtemp(prefix=f"clinrisk-run-{run_id}-")) if own_tmpdir else None
    if scratch is not None:
        env["TMPDIR"] = str(scratch)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def quiet_runner(router: TaskOutputRouter) -> Iterator[None]:
    """Route kfp.local's stdout to per-task logs; keep the root logger's INFO (cache hits) there too.

    On the way out the root logger gets back exactly the handlers it had: kfp.local's
    ``local_logger_context`` saves and restores them per task, and its ParallelFor threads do so
    concurrently, which could leave one of its ``StreamHandler(sys.stdout)`` behind, bound to this run's
    router. A later run in the same process then wrote its task lines into this run's log files and
    progress line too (seen in ``bench_pipeline.py --repeat 3``: "build-features-shard 92.3 s 3/2 tasks")."""
    root = logging.getLogger()
    handler = RootLogToRouter(router)
    level = root.level
    handlers = root.handlers[:]
    with warnings.catch_warnings():
        # kfp.local warns on every task that the component's base image (our pipeline image) is not a
        # Python image. The SubprocessRunner deliberately runs the same components in this interpreter
        # (tier 1), whose environment is the image's (same lock file), so the warning says nothing.
        warnings.filterwarnings("ignore", message=r"You may be attemping to run a task that uses custom")
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(router):
                yield
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)


def _add_env(docker_args: dict[str, Any], env: dict[str, str]) -> None:
    current = docker_args.get("environment")
    if isinstance(current, list):
        docker_args["environment"] = [*current, *(f"{k}={v}" for k, v in env.items())]
    else:
        docker_args["environment"] = {**(current or {}), **env}


def _pipeline_dir(dirs: rc.RunDirs, name: str = PIPELINE_NAME) -> Path | None:
    """kfp.local's folder for this run: the only ``<pipeline name>-*`` under the run's own root."""
    found = sorted(p for p in dirs.dir.glob(f"{name}-*") if p.is_dir())
    if len(found) > 1:
        raise StageError(f"{dirs.dir}: more than one pipeline folder ({', '.join(p.name for p in found)})")
    return found[0] if found else None


def plan_shard_count(dirs: rc.RunDirs, pipeline_name: str = PIPELINE_NAME) -> int | None:
    """The plan's shard count once plan-generation has written it, for the progress bars: in this run's
    folder, or (a resumed run, plan-generation served from the cache) where its cache entry points."""
    pipeline_dir = _pipeline_dir(dirs, pipeline_name)
    candidates = [pipeline_dir / "plan-generation" / "plan"] if pipeline_dir else []
    candidates += [
        Path(uri)
        for entry in dirs.cache.glob("*.json")
        for uri in task_cache.artifact_uris(_read_json(entry))
        if uri.endswith("/plan-generation/plan")
    ]
    for plan_dir in candidates:
        # The progress bars count fan-out tasks: the plan's task groups when it grouped the shards.
        groups = (_read_json(plan_dir / TASK_GROUPS_FILE) or {}).get("groups")
        if isinstance(groups, list):
            return len(groups)
        n = (_read_json(plan_dir / "plan.json") or {}).get("n_shards")
        if isinstance(n, int):
            return n
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _finish_failed(
    dirs: rc.RunDirs, tracking_uri: str | None, status: str, mlflow_status: str, reason: str
) -> None:
    """A failed or interrupted run publishes nothing: temp folders go, its MLflow run is closed.

    Interrupted: KILLED even if the exit handler got to close it FAILED (it sees only a failed task)."""
    rc.remove_temp_dirs(dirs.dir)
    replace = ("RUNNING", "FAILED") if status == rc.INTERRUPTED else ("RUNNING",)
    if tracking_uri:
        with contextlib.suppress(Exception):  # the store itself may be what failed
            rc.terminate_tracking_runs(tracking_uri, dirs.run_id, mlflow_status, replace)
    rc.write_record(dirs, status=status, finished=rc.now_iso(), reason=ANSI.sub("", reason)[:500])


def resolve_resume(
    run_root: Path, resume: str, config_sha: str, pipeline_name: str = PIPELINE_NAME
) -> ResumeSource:
    """The earlier run ``--resume`` names (its id, or its folder), checked to have the same config."""
    candidate = Path(resume)
    rid = candidate.name if candidate.is_absolute() or "/" in resume else resume
    if rid.startswith(f"{pipeline_name}-"):
        rid = candidate.parent.name
    dirs = rc.RunDirs(run_root, rid)
    doc = rc.read_record(dirs.record)
    if doc is None:
        known = [d["run_id"] for d in rc.run_records(run_root)][-5:]
        raise ConfigError(
            f"--resume: no run {resume!r} under {run_root / rc.RUNS_DIR} (recent: {', '.join(known) or 'none'})"
        )
    if doc.get("config_sha256") != config_sha:
        raise ConfigError(
            f"--resume {rid}: the effective config differs from that run's; pass the same --config/--set"
        )
    return ResumeSource(run_id=rid, dir=dirs.dir, cache=dirs.cache)


@dataclass(frozen=True)
class ResumeSource:
    run_id: str
    dir: Path
    cache: Path


def compile_pipeline(out_file: Path, parallelism: int = 2, cfg: ClinriskConfig | None = None) -> Path:
    """Write the pipeline IR YAML (no server needed); pod resources from ``cfg.pipeline`` (or the defaults)."""
    from kfp import compiler

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    resources = cfg.pipeline.resources if cfg is not None else None
    compiler.Compiler().compile(pipeline_for(cfg)[1](parallelism, resources), str(out_file))
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
    package = compile_pipeline(
        Path(package_dir) / f"{pipeline_for(cfg)[0]}.yaml", parallelism=cfg.run.workers, cfg=cfg
    )
    arguments = pipeline_arguments(cfg, deploy=deploy)
    name = run_name or f"{cfg.serving.model_name}-{cfg.run.name}"
    experiment = experiment or cfg.tracking.experiment_name
    if schedule and len(schedule.split()) != 6:
        raise ConfigError(
            f"--schedule: {schedule!r} is not a 6-field cron (seconds first), e.g. '0 0 2 * * *'"
        )
    try:
        with warnings.catch_warnings():
            # kfp.Client warns on every construction that it needs a v2 API server; ours is (see docs).
            warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline v2")
            client = kfp.Client(host=host)
        return _submit(client, package, arguments, name, experiment, schedule)
    except Exception as exc:
        reason = _network_reason(exc)
        if reason is None:
            raise
        raise StageError(f"KFP endpoint {host}: {reason}") from None


def _network_reason(exc: BaseException) -> str | None:
    """One line for a connection or HTTP failure talking to the KFP API (None: not a network error)."""
    import urllib3.exceptions

    try:
        from kfp_server_api.exceptions import ApiException
    except ImportError:  # pragma: no cover - kfp depends on it
        ApiException = ()  # type: ignore[assignment,misc]
    if isinstance(exc, ApiException):
        return f"HTTP {getattr(exc, 'status', '?')} {getattr(exc, 'reason', '') or ''}".strip()
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        inner = exc.reason
        text = str(inner).split(": ", 1)[-1] if inner is not None else str(exc)
        return f"unreachable ({type(inner).__name__ if inner else 'MaxRetryError'}: {text[:200]})"
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return f"unreachable ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def _submit(
    client: Any, package: Path, arguments: dict[str, Any], name: str, experiment: str, schedule: str | None
) -> str:
    if schedule:
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
