"""Path-level entry points of every pipeline step: what the KFP components call.

Each function takes directories (KFP artifact paths) and loads the run's config artifact. The converted
stages (select, train, evaluate) are thin adapters: they build the stage's :class:`~clinrisk.stages.Catalog`
from the task's artifact paths and call ``clinrisk.stages.<stage>.run`` -- the same ``run`` the CLI command
calls. The others (generate, validate, features, register, deploy) still orchestrate here. Per-shard steps
let ``dsl.ParallelFor`` fan out one pod per shard; the merge steps collect shards back into one dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clinrisk.config import ClinriskConfig, load_config, save_config
from clinrisk.errors import ConfigError, DataError
from clinrisk.io import atomic_output_dir, read_json, write_json
from clinrisk.stages.catalog import Catalog, MetricLogger, log_numeric
from clinrisk.stages.shards import copy_shards
from clinrisk.usecases.base import UseCase

CONFIG_FILE = "config.yaml"


def _load(config_dir: str | Path) -> ClinriskConfig:
    return load_config(Path(config_dir) / CONFIG_FILE)


def _usecase(cfg: ClinriskConfig) -> UseCase:
    from clinrisk.usecases import get

    return get(cfg.run.usecase)


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


def tag_model_uri_step(config_dir: str | Path, mlflow_run_id: str, model_uri: str) -> str:
    """Record on the MLflow run the model URI register returned (the DAG's result: the exit task, which
    may depend on no task, reads it back); returns ``model_uri``."""
    from clinrisk.tracking import configure, mlflow_client

    cfg = _load(config_dir)
    if mlflow_run_id and cfg.tracking.enabled:
        configure(cfg)
        mlflow_client().set_tag(mlflow_run_id, MODEL_URI_TAG, model_uri)
    return model_uri


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


def plan_shards(plan: dict[str, Any]) -> list[int]:
    """The shard indices every per-shard task fans out over: the plan's, never the config's (the plan may
    make fewer shards than ``generate.n_shards``, e.g. when there are fewer patient blocks)."""
    n = plan.get("n_shards")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DataError(f"plan.json: n_shards must be an integer >= 1, got {n!r}")
    return list(range(n))


def plan_generation_step(config_dir: str | Path, out_dir: str | Path) -> list[int]:
    """Calibrate α by bisection and fix each shard's patient blocks (plan.json); returns the shard indices
    the pipeline fans out over (the plan owns the fan-out)."""
    from clinrisk import datacache

    cfg = _load(config_dir)
    # With experiments.data_cache_dir set, the reuse decision is made once, here, and travels in the plan.
    hit = datacache.lookup(cfg)
    if hit is not None:
        plan = {**hit["plan"], "data_cache": datacache.reuse_info(hit)}
    else:
        plan = _usecase(cfg).source.plan(cfg)
        if cfg.experiments.data_cache_dir is not None:
            plan["data_cache"] = {"key": datacache.data_key(cfg), "reused_from": None}
    with atomic_output_dir(Path(out_dir)) as tmp:
        write_json(tmp / "plan.json", plan)
    return plan_shards(plan)


def generate_shard_step(
    config_dir: str | Path, plan_dir: str | Path, shard: int, out_dir: str | Path
) -> None:
    """Generate one shard's observed tables + truth (the use case's generator; the framework writes them)."""
    from clinrisk import datacache
    from clinrisk.usecase_io import write_raw_shard

    cfg = _load(config_dir)
    plan = read_json(Path(plan_dir) / "plan.json")
    if shard not in plan_shards(plan):
        raise DataError(f"shard {shard}: the plan has shards 0..{plan['n_shards'] - 1}")
    with atomic_output_dir(Path(out_dir)) as tmp:
        if (reuse := datacache.reused(plan)) is not None:
            write_json(tmp / datacache.REUSED_MARKER, reuse)  # merge-data links the cached data instead
        else:
            usecase = _usecase(cfg)
            write_raw_shard(usecase.source.generate_shard(cfg, plan, shard), usecase, tmp, shard)


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
    """Collect raw and validated shards; write the manifest (content hash) and the validation report.

    The same checks as ``clinrisk validate`` apply (row counts vs manifest, quarantine share), so a run
    with too much bad data stops here and publishes neither dataset.
    """
    from clinrisk import datacache
    from clinrisk.generate import CONFIG_FILE as RAW_CONFIG_FILE
    from clinrisk.generate import MANIFEST
    from clinrisk.usecase_io import raw_files_sha256, read_raw_shard, validated_dir
    from clinrisk.usecases.base import TRUTH_TABLE
    from clinrisk.validate import (
        build_report,
        check_report,
        read_raw_manifest,
        render_report_md,
        verify_raw_files,
        write_report,
    )

    cfg = _load(config_dir)
    plan = read_json(Path(plan_dir) / "plan.json")
    if (reuse := datacache.reused(plan)) is not None:
        # Copy-free reuse: this run's raw/validated outputs are links to the source run's directories.
        datacache.link_dir(Path(reuse["raw_dir"]), Path(raw_out))
        datacache.link_dir(Path(reuse["validated_dir"]), Path(validated_out))
        report = read_json(Path(validated_out) / "validation" / "report.json")
        note = f"> Data reused from run `{reuse['reused_from']}` (data cache key `{reuse['key'][:16]}`).\n\n"
        Path(report_file).parent.mkdir(parents=True, exist_ok=True)
        Path(report_file).write_text(note + render_report_md(report))
        keys = ("rows_in", "rows_valid", "rows_quarantined", "quarantine_fraction")
        if log_metric is not None:
            log_numeric(log_metric, {k: report[k] for k in keys if k in report})
        return dict(report)
    usecase = _usecase(cfg)
    with atomic_output_dir(Path(raw_out)) as raw_tmp, atomic_output_dir(Path(validated_out)) as val_tmp:
        for table in (*usecase.source.tables, TRUTH_TABLE):
            copy_shards(raw_parts, table, raw_tmp / table)
        manifest_doc = usecase.source.manifest(cfg, plan, lambda s: read_raw_shard(usecase, raw_tmp, s))
        manifest_doc["files_sha256"] = raw_files_sha256(raw_tmp)  # what `clinrisk validate` checks
        save_config(cfg, raw_tmp / RAW_CONFIG_FILE)
        write_json(raw_tmp / MANIFEST, manifest_doc)
        manifest = read_raw_manifest(raw_tmp)
        manifest["files_verified"] = verify_raw_files(raw_tmp, manifest)
        for table in usecase.source.tables:
            copy_shards(validated_parts, f"validated/{table}", validated_dir(usecase, val_tmp, table))
            copy_shards(
                validated_parts, f"quarantine/{table}", validated_dir(usecase, val_tmp / "quarantine", table)
            )
        stats = [read_json(Path(p) / "stats.json") for p in validated_parts]
        report = build_report(cfg, stats, manifest)
        check_report(cfg, report, manifest, raw_tmp / usecase.source.tables[0])
        write_report(report, val_tmp / "validation")
    if plan.get("data_cache") is not None:
        datacache.publish(cfg, plan, Path(raw_out), Path(validated_out), report)
    Path(report_file).parent.mkdir(parents=True, exist_ok=True)
    Path(report_file).write_text(render_report_md(report))
    if log_metric is not None:
        keys = ("rows_in", "rows_valid", "rows_quarantined", "quarantine_fraction")
        log_numeric(log_metric, {k: report[k] for k in keys if k in report})
    return dict(report)


# --------------------------------------------------------------------------- validation


def validate_shard_step(
    config_dir: str | Path, raw_shard_dir: str | Path, shard: int, out_dir: str | Path
) -> None:
    """Validate one generated shard (the use case's schema) into
    ``out_dir/{validated,quarantine}/<table>/shard=NNN`` + ``stats.json``."""
    from clinrisk import datacache
    from clinrisk.io import shard_file
    from clinrisk.usecase_io import read_raw_shard, write_validated_shard

    cfg = _load(config_dir)
    marker = Path(raw_shard_dir) / datacache.REUSED_MARKER
    if marker.is_file():
        with atomic_output_dir(Path(out_dir)) as tmp:
            write_json(tmp / datacache.REUSED_MARKER, read_json(marker))
        return
    usecase = _usecase(cfg)
    raw = read_raw_shard(usecase, Path(raw_shard_dir), shard, truth=False)
    result = usecase.schema.validate(cfg, raw, shard)
    with atomic_output_dir(Path(out_dir)) as tmp:
        # one sub-directory per table here (merge-data lays them out; see clinrisk.usecase_io)
        stats = write_validated_shard(
            result, usecase, tmp / "validated", tmp / "quarantine", shard, per_table=True
        )
        stats["file"] = str(shard_file(Path(raw_shard_dir) / usecase.source.tables[0], shard))
        write_json(tmp / "stats.json", stats)


# --------------------------------------------------------------------------- features


def fit_feature_spec_step(config_dir: str | Path, validated_dir: str | Path, out_dir: str | Path) -> None:
    """Freeze the feature spec into ``out_dir/feature_spec.json`` (:func:`clinrisk.stages.features.fit_spec`)."""
    from clinrisk.stages import features

    io = _catalog({"validated": validated_dir, "feature_spec": Path(out_dir) / features.SPEC_FILE})
    features.fit_spec(_load(config_dir), io)


def build_features_shard_step(
    config_dir: str | Path,
    spec_dir: str | Path,
    validated_dir: str | Path,
    raw_dir: str | Path,
    shard: int,
    out_dir: str | Path,
) -> None:
    """The feature table of one shard (:func:`clinrisk.stages.features.build_shard`; the truth shards are
    the raw dataset's, when it has them)."""
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


def merge_features_step(
    config_dir: str | Path, spec_dir: str | Path, part_dirs: list[str | Path], out_dir: str | Path
) -> dict[str, Any]:
    """Collect the feature shards into one dataset (:func:`clinrisk.stages.features.merge`)."""
    from clinrisk.stages import features

    io = _catalog({"feature_spec": Path(spec_dir) / features.SPEC_FILE, "features": out_dir})
    return features.merge(_load(config_dir), io, [Path(p) for p in part_dirs])


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


def train_step(
    config_dir: str | Path,
    features_dir: str | Path,
    selection_dir: str | Path,
    mlflow_run_id: str,
    out_dir: str | Path,
    log_metric: MetricLogger | None = None,
) -> dict[str, Any]:
    """Train on the selected features, calibrate, choose τ, write the bundle; log validation metrics
    (:mod:`clinrisk.stages.train`)."""
    from clinrisk.stages import train

    io = _catalog(
        {"features": features_dir, "selection": selection_dir, "model_bundle": out_dir},
        mlflow_run_id,
        log_metric,
    )
    return dict(train.run(_load(config_dir), io))


# --------------------------------------------------------------------------- evaluation


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


def register_step(
    config_dir: str | Path,
    bundle_dir: str | Path,
    evaluation_dir: str | Path,
    validation_report: str | Path,
    mlflow_run_id: str,
    validated_dir: str | Path | None = None,
) -> str:
    """Log the small reports to the run, register the bundle (alias ``challenger``; an identical bundle
    reuses its version), make it ``champion`` when there is none yet; returns ``models:/name/version``.

    The run gets only small artefacts: the validation report (``validated_dir/validation``: JSON and
    Markdown; else the Markdown ``validation_report``), the config and the registered model (the evaluation
    report and plots come from the evaluate step). Never the data folders beside them (raw data, truth,
    quarantine).
    """
    from clinrisk.promotion import bootstrap_champion
    from clinrisk.registry import register_bundle
    from clinrisk.tracking import (
        CHALLENGER,
        configure,
        end_run,
        headline_description,
        log_file,
        log_report_files,
        model_uri,
        set_description,
    )

    cfg = _load(config_dir)
    if not mlflow_run_id:
        return str(Path(bundle_dir))
    configure(cfg)
    report_dir = Path(validated_dir) / "validation" if validated_dir is not None else None
    if report_dir is not None and report_dir.is_dir():
        log_report_files(report_dir, "validation", mlflow_run_id, suffixes=(".json", ".md"))
    else:
        log_file(Path(validation_report), "validation", mlflow_run_id)
    log_file(Path(config_dir) / CONFIG_FILE, "config", mlflow_run_id)
    version = register_bundle(cfg, Path(bundle_dir), mlflow_run_id)
    name = cfg.tracking.registered_model_name
    aliases = f"@{CHALLENGER}"
    record = bootstrap_champion(cfg)
    if record is not None and record.get("champion_after") == version:
        aliases += " and @champion, the first model to pass the gate"
    metrics_file = Path(evaluation_dir) / "metrics.json"
    headline = read_json(metrics_file).get("headline", {}) if metrics_file.is_file() else {}
    set_description(mlflow_run_id, headline_description(cfg, headline, f"`{name}` v{version} ({aliases})"))
    end_run(mlflow_run_id)
    return model_uri(cfg, version)


def deploy_canary_step(
    config_dir: str | Path,
    model_uri: str,
    inference_service: str,
    namespace: str,
    percent: int,
    api: Any = None,
) -> str:
    """Start (or shift) a canary of ``model_uri`` on the InferenceService through the Kubernetes API.

    A registry URI (``models:/name/version`` or ``models:/name@alias``, what ``register`` returns) is
    resolved to the bundle's storage location first: KServe's storage initializer cannot read ``models:/``.
    """
    from clinrisk.rollout import KubernetesIsvcApi, Rollout
    from clinrisk.tracking import resolve_storage_uri

    cfg = _load(config_dir)
    storage_uri = resolve_storage_uri(cfg, model_uri)
    rollout = Rollout(
        api if api is not None else KubernetesIsvcApi(),
        namespace=namespace or cfg.serving.namespace,
        name=inference_service or cfg.serving.model_name,
    )
    state = rollout.canary(model_uri=storage_uri, percent=percent)
    return str(state)


__all__ = [
    "CONFIG_FILE",
    "atomic_output_dir",
    "copy_shards",
    "read_json",
    "resolve_config_step",
    "write_json",
]
