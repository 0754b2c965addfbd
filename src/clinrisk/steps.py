"""Path-level entry points of every pipeline step: what the KFP components call.

Each function takes directories (KFP artifact paths) and loads the run's config artifact. The stage steps
are thin adapters: they build the stage's :class:`~clinrisk.stages.Catalog` from the task's artifact paths
and call ``clinrisk.stages.<stage>`` -- its ``run`` (select, train, evaluate, register, deploy: the same
``run`` the CLI command calls) or, for the sharded stages (generate, validate, features), the per-shard and
collect pieces that the stage's ``run`` is made of on one machine. Per-shard steps let ``dsl.ParallelFor``
fan out one pod per shard; the merge steps collect shards back into one dataset. What stays here is
KFP-only: the config artifact, the MLflow run of the DAG, the data cache, the UI's Markdown and metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clinrisk.config import ClinriskConfig, load_config, save_config
from clinrisk.errors import ConfigError, DataError
from clinrisk.io import atomic_output_dir, read_json, write_json
from clinrisk.stages.catalog import Catalog, MetricLogger, log_numeric
from clinrisk.stages.shards import (
    GROUP_PARTS_FILE,
    TASK_GROUPS_FILE,
    copy_shards,
    expand_parts,
    group_part_name,
    group_shards,
    plan_shards,
)
from clinrisk.task_exit import task_step
from clinrisk.usecases.base import UseCase

CONFIG_FILE = "config.yaml"
PLAN_FILE = "plan.json"  # inside the plan artefact (also KFP_OUTPUTS["plan"])
MANIFEST_FILE = "manifest.json"  # inside the raw artefact


def _load(config_dir: str | Path) -> ClinriskConfig:
    return load_config(Path(config_dir) / CONFIG_FILE)


def _usecase(cfg: ClinriskConfig) -> UseCase:
    from clinrisk.usecases import get

    return get(cfg.run.usecase)


@task_step
def resolve_config_step(
    config_yaml: str,
    overrides: list[str],
    out_dir: str | Path,
    usecase: str = "clinical",
    config_name: str = "default",
    n_patients: int = 0,
    seed: int = -1,
    run_name: str = "",
) -> None:
    """Validate the pipeline parameters (a named config file or the pasted YAML, plus overrides) and write
    the effective config artifact (the shard fan-out is the plan's: :func:`plan_generation_step`)."""
    from clinrisk.pipeline_params import from_form, resolve

    params = from_form(usecase, config_name, config_yaml, overrides, n_patients, seed, run_name)
    out = Path(out_dir)
    cfg = resolve(params, out)
    save_config(cfg, out / CONFIG_FILE)


# --------------------------------------------------------------------------- tracking + generation


@task_step
def start_tracking_step(config_dir: str | Path, kfp_run_id: str) -> str:
    """Open the pipeline run's MLflow run (tagged with the KFP run id) with the flattened config as params."""
    from clinrisk.tracking import log_config, start_run

    cfg = _load(config_dir)
    if not cfg.tracking.enabled:
        return ""
    run_id = start_run(cfg, kfp_run_id=run_key(kfp_run_id) or None)
    log_config(cfg, run_id)
    return run_id


def run_key(kfp_run_id: str) -> str:
    """The id that ties a DAG run to its MLflow run, the same for start_tracking and the exit handler.

    kfp.local's PIPELINE_JOB_ID placeholder is a random id of its own; the local runner passes the real run
    id (the name of the run's folder) in the environment. On a cluster the placeholder is the real one."""
    from clinrisk.run_control import RUN_ID_ENV

    return os.environ.get(RUN_ID_ENV) or kfp_run_id


# KFP's final states of the DAG (PipelineTaskFinalStatus.state) -> the MLflow status of a run left RUNNING.
_FINAL_MLFLOW_STATUS = {"SUCCEEDED": "FINISHED", "CANCELED": "KILLED", "CANCELLED": "KILLED"}
KFP_RUN_TAG = "kfp.run_id"  # the tag start_tracking_step gives the MLflow run (tracking.start_run)
MODEL_URI_TAG = "clinrisk.model_uri"  # the model URI register returned, read back by the exit handler


@task_step
def tag_model_uri_step(config_dir: str | Path, mlflow_run_id: str, model_uri: str) -> str:
    """Record on the MLflow run the model URI register returned (the DAG's result: the exit task, which
    may depend on no task, reads it back); returns ``model_uri``."""
    from clinrisk.tracking import configure, mlflow_client

    cfg = _load(config_dir)
    if mlflow_run_id and cfg.tracking.enabled:
        configure(cfg)
        mlflow_client().set_tag(mlflow_run_id, MODEL_URI_TAG, model_uri)
    return model_uri


@task_step
def finalize_tracking_step(params: Any, kfp_run_id: str, pipeline_state: str, error_message: str = "") -> str:
    """The DAG's exit handler: close the pipeline's MLflow run if a step left it RUNNING; returns the model
    URI the run registered ("" if none) — the pipeline's result, since only the exit task is at its top level.

    ``params`` are the pipeline parameters (:class:`clinrisk.pipeline_params.PipelineParams`; an exit task
    can take nothing else), resolved to the run's config as resolve_config did; the MLflow run is the one
    tagged ``kfp.run_id = kfp_run_id``. A run that register already ended is left as it is (a no-op after
    success); one still RUNNING when the DAG ends becomes FAILED (KILLED when the DAG was cancelled,
    FINISHED only if the DAG succeeded). The DAG's final state and error are tagged either way.
    """
    import tempfile

    from clinrisk.pipeline_params import resolve
    from clinrisk.tracking import configure, end_run, mlflow_client

    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg = resolve(params, Path(tmp))
        except ConfigError:
            return ""  # resolve_config failed on the same parameters: no MLflow run was ever opened
    if not kfp_run_id or not cfg.tracking.enabled:
        return ""
    exp_id = configure(cfg)
    client = mlflow_client()
    key = run_key(kfp_run_id).replace("'", "")
    state = (pipeline_state or "FAILED").upper()
    model_uri = ""
    for run in client.search_runs([exp_id], f"tags.`{KFP_RUN_TAG}` = '{key}'"):
        run_id = run.info.run_id
        client.set_tag(run_id, "kfp.pipeline_state", state)
        if error_message:
            client.set_tag(run_id, "kfp.pipeline_error", error_message[:5000])
        if run.info.status == "RUNNING":
            end_run(run_id, status=_FINAL_MLFLOW_STATUS.get(state, "FAILED"))
        model_uri = model_uri or str(run.data.tags.get(MODEL_URI_TAG, ""))
    return model_uri


@task_step
def plan_generation_step(config_dir: str | Path, out_dir: str | Path, task_groups: int = 0) -> list[int]:
    """Calibrate α by bisection and fix each shard's patient blocks (plan.json); returns the indices the
    pipeline fans out over (the plan owns the fan-out; :mod:`clinrisk.stages.generate`).

    ``task_groups`` 0: one task per shard, the indices are the shard indices. ``task_groups`` N > 0 (the
    local runner: N = ``run.workers``): the shards form at most N contiguous groups (task_groups.json beside
    plan.json) and the indices are the group indices; each fan-out task runs its group's shards in one
    process (:func:`_run_group`)."""
    from clinrisk import datacache
    from clinrisk.stages import generate

    cfg = _load(config_dir)
    io = _catalog({"plan": Path(out_dir) / PLAN_FILE})
    # With experiments.data_cache_dir set, the reuse decision is made once, here, and travels in the plan.
    hit = datacache.lookup(cfg)
    if hit is not None:
        plan = {**hit["plan"], "data_cache": datacache.reuse_info(hit)}
    else:
        plan = _usecase(cfg).source.plan(cfg)
        if cfg.experiments.data_cache_dir is not None:
            plan["data_cache"] = {"key": datacache.data_key(cfg), "reused_from": None}
    shards = plan_shards(plan)
    if task_groups == 0:
        generate.publish_plan(plan, io)
        return shards
    groups = group_shards(shards, task_groups)
    generate.publish_plan(plan, io, extra={TASK_GROUPS_FILE: {"groups": groups}})
    return list(range(len(groups)))


def _task_shards(plan_dir: str | Path, task: int) -> list[int] | None:
    """The shards of fan-out task ``task`` when the plan grouped them, else None (the task is one shard)."""
    groups_file = Path(plan_dir) / TASK_GROUPS_FILE
    if not groups_file.is_file():
        return None
    groups = read_json(groups_file)["groups"]
    if not 0 <= task < len(groups):
        raise DataError(f"task group {task}: the plan has task groups 0..{len(groups) - 1}")
    return [int(s) for s in groups[task]]


def _run_group(out_dir: str | Path, shards: list[int], one: Callable[[int, Path], None]) -> None:
    """Run ``one(shard, part_dir)`` for each shard of a task group, one after another in this process,
    into per-shard subfolders of ``out_dir`` listed in group_parts.json; published together or not at all
    (a failure or a signal mid-group leaves no partial group). The merge steps expand the listing back into
    the per-shard parts (:func:`~clinrisk.stages.shards.expand_parts`)."""
    with atomic_output_dir(Path(out_dir)) as tmp:
        for shard in shards:
            one(shard, tmp / group_part_name(shard))
        write_json(tmp / GROUP_PARTS_FILE, {"shards": shards, "parts": [group_part_name(s) for s in shards]})


@task_step
def generate_shard_step(
    config_dir: str | Path, plan_dir: str | Path, shard: int, out_dir: str | Path
) -> None:
    """Generate one shard's observed tables + truth (:func:`clinrisk.stages.generate.generate_shard`); with
    a grouped plan ``shard`` is the task group and each of its shards is generated in turn."""
    group = _task_shards(plan_dir, shard)
    if group is not None:
        _run_group(out_dir, group, lambda s, part: _generate_one(config_dir, plan_dir, s, part))
        return
    _generate_one(config_dir, plan_dir, shard, out_dir)


def _generate_one(config_dir: str | Path, plan_dir: str | Path, shard: int, out_dir: str | Path) -> None:
    from clinrisk import datacache
    from clinrisk.stages import generate

    cfg = _load(config_dir)
    plan = generate.read_plan(_catalog({"plan": Path(plan_dir) / PLAN_FILE}))
    if (reuse := datacache.reused(plan)) is not None:
        if shard not in plan_shards(plan):
            raise DataError(f"shard {shard}: the plan has shards 0..{plan['n_shards'] - 1}")
        with atomic_output_dir(Path(out_dir)) as tmp:
            write_json(tmp / datacache.REUSED_MARKER, reuse)  # merge-data links the cached data instead
        return
    generate.generate_shard(cfg, _catalog({"raw_shard": out_dir}), plan, shard)


@task_step
def merge_data_step(
    config_dir: str | Path,
    plan_dir: str | Path,
    raw_parts: list[str | Path],
    validated_parts: list[str | Path],
    raw_out: str | Path,
    validated_out: str | Path,
    report_file: str | Path,
    log_metric: MetricLogger | None = None,
) -> dict[str, Any]:
    """Collect raw and validated shards into the two datasets (:func:`clinrisk.stages.generate.collect`,
    :func:`clinrisk.stages.validate.collect`): the raw manifest (content hash) and the validation report.

    The same gates as ``clinrisk validate`` apply (shards and row counts vs manifest, no entity in two
    shards, quarantine share), so a run with too much bad data stops here and publishes neither dataset.
    The validated artefact holds the quarantine and the report too (``quarantine/``, ``validation/``).
    """
    from clinrisk import datacache
    from clinrisk.stages import generate
    from clinrisk.stages import validate as validate_stage
    from clinrisk.validate import checked_raw_manifest, render_report_md

    raw_parts, validated_parts = list(expand_parts(raw_parts)), list(expand_parts(validated_parts))
    cfg = _load(config_dir)
    plan = generate.read_plan(_catalog({"plan": Path(plan_dir) / PLAN_FILE}))
    if (reuse := datacache.reused(plan)) is not None:
        # Copy-free reuse: this run's raw/validated outputs are links to the source run's directories.
        datacache.link_dir(Path(reuse["raw_dir"]), Path(raw_out))
        datacache.link_dir(Path(reuse["validated_dir"]), Path(validated_out))
        report = read_json(Path(validated_out) / "validation" / "report.json")
        note = f"> Data reused from run `{reuse['reused_from']}` (data cache key `{reuse['key'][:16]}`).\n\n"
        Path(report_file).parent.mkdir(parents=True, exist_ok=True)
        Path(report_file).write_text(note + render_report_md(report))
        _log_validation_metrics(report, log_metric)
        return dict(report)
    with atomic_output_dir(Path(raw_out)) as raw_tmp, atomic_output_dir(Path(validated_out)) as val_tmp:
        generate.collect(cfg, plan, raw_parts, raw_tmp)
        # Verified in the staging folder, but named by the path it is published under (report, errors).
        manifest = {**checked_raw_manifest(raw_tmp), "path": str(Path(raw_out) / "manifest.json")}
        report = validate_stage.collect(
            cfg,
            manifest,
            validated_parts,
            val_tmp,
            val_tmp / "quarantine",
            val_tmp / "validation",
        )
    if plan.get("data_cache") is not None:
        datacache.publish(cfg, plan, Path(raw_out), Path(validated_out), report)
    Path(report_file).parent.mkdir(parents=True, exist_ok=True)
    Path(report_file).write_text(render_report_md(report))
    _log_validation_metrics(report, log_metric)
    return dict(report)


def _log_validation_metrics(report: dict[str, Any], log_metric: MetricLogger | None) -> None:
    if log_metric is not None:
        keys = ("rows_in", "rows_valid", "rows_quarantined", "quarantine_fraction")
        log_numeric(log_metric, {k: report[k] for k in keys if k in report})


# --------------------------------------------------------------------------- validation


@task_step
def validate_shard_step(
    config_dir: str | Path, raw_shard_dir: str | Path, shard: int, out_dir: str | Path
) -> None:
    """Validate one generated shard (:func:`clinrisk.stages.validate.validate_shard`) into
    ``out_dir/{validated,quarantine}/<table>/shard=NNN`` + ``stats.json``. The output of a grouped
    generate task is validated shard by shard into a grouped output (``shard`` is then the group's index)."""
    listing = Path(raw_shard_dir) / GROUP_PARTS_FILE
    if listing.is_file():
        shards = [int(s) for s in read_json(listing)["shards"]]
        _run_group(
            out_dir,
            shards,
            lambda s, part: _validate_one(config_dir, Path(raw_shard_dir) / group_part_name(s), s, part),
        )
        return
    _validate_one(config_dir, raw_shard_dir, shard, out_dir)


def _validate_one(config_dir: str | Path, raw_shard_dir: str | Path, shard: int, out_dir: str | Path) -> None:
    from clinrisk import datacache
    from clinrisk.stages import validate as validate_stage

    cfg = _load(config_dir)
    marker = Path(raw_shard_dir) / datacache.REUSED_MARKER
    if marker.is_file():
        with atomic_output_dir(Path(out_dir)) as tmp:
            write_json(tmp / datacache.REUSED_MARKER, read_json(marker))
        return
    validate_stage.validate_shard(cfg, _catalog({"raw": raw_shard_dir, "validated_shard": out_dir}), shard)


# --------------------------------------------------------------------------- features


@task_step
def fit_feature_spec_step(config_dir: str | Path, validated_dir: str | Path, out_dir: str | Path) -> None:
    """Freeze the feature spec into ``out_dir/feature_spec.json`` (:func:`clinrisk.stages.features.fit_spec`)."""
    from clinrisk.stages import features

    io = _catalog({"validated": validated_dir, "feature_spec": Path(out_dir) / features.SPEC_FILE})
    features.fit_spec(_load(config_dir), io)


@task_step
def build_features_shard_step(
    config_dir: str | Path,
    spec_dir: str | Path,
    validated_dir: str | Path,
    raw_dir: str | Path,
    shard: int,
    out_dir: str | Path,
    plan_dir: str | Path | None = None,
) -> None:
    """The feature table of one shard (:func:`clinrisk.stages.features.build_shard`; the truth shards are
    the raw dataset's, when it has them); with a grouped plan (``plan_dir``) ``shard`` is the task group
    and each of its shards is built in turn."""
    group = _task_shards(plan_dir, shard) if plan_dir is not None else None
    if group is not None:
        _run_group(
            out_dir,
            group,
            lambda s, part: _features_one(config_dir, spec_dir, validated_dir, raw_dir, s, part),
        )
        return
    _features_one(config_dir, spec_dir, validated_dir, raw_dir, shard, out_dir)


def _features_one(
    config_dir: str | Path,
    spec_dir: str | Path,
    validated_dir: str | Path,
    raw_dir: str | Path,
    shard: int,
    out_dir: str | Path,
) -> None:
    from clinrisk.stages import features
    from clinrisk.usecases.base import TRUTH_TABLE

    io = _catalog(
        {
            "feature_spec": Path(spec_dir) / features.SPEC_FILE,
            "validated": validated_dir,
            "truth": Path(raw_dir) / TRUTH_TABLE,
            "features_shard": out_dir,
        }
    )
    features.build_shard(_load(config_dir), io, shard)


@task_step
def merge_features_step(
    config_dir: str | Path, spec_dir: str | Path, part_dirs: list[str | Path], out_dir: str | Path
) -> dict[str, Any]:
    """Collect the feature shards into one dataset (:func:`clinrisk.stages.features.merge`)."""
    from clinrisk.stages import features

    io = _catalog({"feature_spec": Path(spec_dir) / features.SPEC_FILE, "features": out_dir})
    return features.merge(_load(config_dir), io, expand_parts(part_dirs))


# --------------------------------------------------------------------------- selection + training


def _catalog(
    paths: dict[str, str | Path | None],
    mlflow_run_id: str = "",
    log_metric: MetricLogger | None = None,
    **extra: Any,
) -> Catalog:
    """The stage catalog of one KFP task: its input and output artefact paths by logical name."""
    return Catalog(
        {}, mlflow_run_id, log_metric, {k: v for k, v in extra.items() if v is not None}
    ).with_paths(**paths)


@task_step
def select_features_step(
    config_dir: str | Path,
    features_dir: str | Path,
    out_dir: str | Path,
    log_metric: MetricLogger | None = None,
) -> dict[str, Any]:
    """Feature selection under the memory budget; writes selected_features.json (:mod:`clinrisk.stages.select`)."""
    from clinrisk.stages import select

    io = _catalog({"features": features_dir, "selection": out_dir}, log_metric=log_metric)
    return dict(select.run(_load(config_dir), io))


@task_step
def train_step(
    config_dir: str | Path,
    features_dir: str | Path,
    selection_dir: str | Path,
    mlflow_run_id: str,
    out_dir: str | Path,
    log_metric: MetricLogger | None = None,
    raw_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train on the selected features, calibrate, choose τ, write the bundle; log validation metrics
    (:mod:`clinrisk.stages.train`). ``raw_dir`` is the raw dataset, whose manifest gives the bundle's data
    hash (as in the CLI's run folder)."""
    from clinrisk.stages import train

    io = _catalog(
        {
            "features": features_dir,
            "selection": selection_dir,
            "model_bundle": out_dir,
            "raw_manifest": Path(raw_dir) / MANIFEST_FILE if raw_dir is not None else None,
        },
        mlflow_run_id,
        log_metric,
    )
    return dict(train.run(_load(config_dir), io))


# --------------------------------------------------------------------------- evaluation


@task_step
def evaluate_step(
    config_dir: str | Path,
    bundle_dir: str | Path,
    features_dir: str | Path,
    mlflow_run_id: str,
    out_dir: str | Path,
    report_file: str | Path,
    log_metric: MetricLogger | None = None,
    classification: Any = None,
    report_html_file: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate on the test split; report as Markdown (+ HTML), headline metrics, ROC + confusion matrix for
    the UI (:mod:`clinrisk.stages.evaluate`)."""
    from clinrisk.stages import evaluate

    io = _catalog(
        {
            "model_bundle": bundle_dir,
            "features": features_dir,
            "evaluation": out_dir,
            "report_md": report_file,
            "report_html": report_html_file,
        },
        mlflow_run_id,
        log_metric,
        classification=classification,
    )
    return dict(evaluate.run(_load(config_dir), io))


# --------------------------------------------------------------------------- registry + deploy


@task_step
def register_step(
    config_dir: str | Path,
    bundle_dir: str | Path,
    evaluation_dir: str | Path,
    validation_report: str | Path,
    mlflow_run_id: str,
    validated_dir: str | Path | None = None,
) -> str:
    """Register the bundle in the pipeline's MLflow run (:mod:`clinrisk.stages.register`: alias
    ``challenger``, an identical bundle reuses its version, ``champion`` when there is none yet, the run's
    small reports, the run ended); returns ``models:/name/version`` (the bundle's path with tracking off).

    The validation report is ``validated_dir/validation`` (JSON and Markdown), else the Markdown
    ``validation_report``."""
    from clinrisk.stages import register

    io = _catalog(
        {
            "model_bundle": bundle_dir,
            "evaluation": evaluation_dir,
            "validation": Path(validated_dir) / "validation" if validated_dir is not None else None,
            "validation_report_md": validation_report,
            "config_file": Path(config_dir) / CONFIG_FILE,
        },
        mlflow_run_id,
    )
    return str(register.run(_load(config_dir), io)["model_uri"])


@task_step
def deploy_canary_step(
    config_dir: str | Path,
    model_uri: str,
    inference_service: str,
    namespace: str,
    percent: int,
    api: Any = None,
) -> str:
    """Start (or shift) a canary of ``model_uri`` on the InferenceService through the Kubernetes API
    (:mod:`clinrisk.stages.deploy`: a ``models:/`` URI is resolved to the bundle's storage URI first)."""
    from clinrisk.stages import deploy

    state = deploy.run(
        _load(config_dir),
        _catalog({}),
        model_uri,
        percent,
        api=api,
        namespace=namespace or None,
        name=inference_service or None,
    )
    return str(state)


__all__ = [
    "CONFIG_FILE",
    "atomic_output_dir",
    "copy_shards",
    "plan_shards",
    "read_json",
    "resolve_config_step",
    "write_json",
]
