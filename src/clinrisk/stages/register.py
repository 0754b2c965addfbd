"""The register stage: the bundle into the MLflow model registry, with its run's small reports.

Core: :func:`clinrisk.registry.register_bundle` (the bundle's content hash decides: an identical bundle
reuses its version, a new one is logged as a pyfunc model and becomes a version with its tags and alias
together, or not at all) and :func:`clinrisk.promotion.bootstrap_champion` (with no ``champion`` yet, the
first model through the gate becomes it). ``run`` does the tracking around them, the same for the CLI
(``clinrisk register``: it opens a run of its own, with the config and the bundle's metrics) and the KFP
step (the pipeline's run, where training logged them): the validation report (``validation``, else the
Markdown ``validation_report_md``), the effective config (``config_file``, else the config written there),
the registered version, the description with the test headline (``evaluation``), the run ended.

Catalog entries: ``model_bundle`` (in), ``evaluation``, ``validation``, ``validation_report_md``,
``config_file`` (in, optional), ``run_root`` (the run folder whose local MLflow store is used when
``tracking.tracking_uri`` is empty; absent under KFP, where the resolved config names the store).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from clinrisk.config import ClinriskConfig, save_config
from clinrisk.errors import DataError
from clinrisk.io import read_json
from clinrisk.stages.catalog import Catalog
from clinrisk.tracking import CHALLENGER


def run(cfg: ClinriskConfig, io: Catalog, alias: str = CHALLENGER) -> dict[str, Any]:
    """Register ``io["model_bundle"]`` under ``alias`` in the run ``io.mlflow_run_id`` (a run of its own
    when empty; with ``tracking.enabled`` false and no run, nothing is registered and the model URI is the
    bundle's path). Returns ``{"model_uri", "version", "run_id", "champion"}``; on failure the run is ended
    FAILED and no alias moved (register_bundle's all-or-nothing)."""
    from clinrisk.bundle import load_bundle
    from clinrisk.promotion import bootstrap_champion
    from clinrisk.registry import register_bundle, run_upload_error
    from clinrisk.tracking import configure, end_run, log_config, log_metrics, model_uri, start_run

    bundle_dir = io.path("model_bundle")
    bundle = load_bundle(bundle_dir)  # an invalid bundle is refused before any run or registry change
    run_dir = io.get("run_root")
    run_id = io.mlflow_run_id
    if not run_id and not cfg.tracking.enabled:
        return {"model_uri": str(bundle_dir), "version": None, "run_id": "", "champion": False}
    configure(cfg, run_dir)
    own_run = not run_id
    if own_run:
        run_id = start_run(cfg, run_dir, tags={"clinrisk.bundle_version": bundle.version})
    try:
        try:
            if own_run:
                log_config(cfg, run_id)
                log_metrics(bundle.metrics, run_id)
            _log_reports(cfg, io, run_id)
        except DataError:
            raise
        except Exception as exc:  # the run's artefacts go to the same store as the model: same refusal
            raise run_upload_error(cfg, run_id, "the run's config and reports", exc, run_dir) from None
        version = register_bundle(cfg, bundle_dir, run_id, alias=alias, run_dir=run_dir)
        record = bootstrap_champion(cfg, run_dir) if alias == CHALLENGER else None
        champion = record is not None and record.get("champion_after") == version
        _describe(cfg, io, run_id, version, alias, champion)
    except BaseException:
        end_run(run_id, "FAILED")
        raise
    end_run(run_id)
    return {"model_uri": model_uri(cfg, version), "version": version, "run_id": run_id, "champion": champion}


def _log_reports(cfg: ClinriskConfig, io: Catalog, run_id: str) -> None:
    """Only small artefacts go to the run: the validation report (JSON + Markdown) and the config; never
    the data folders beside them (raw data, truth, quarantine)."""
    from clinrisk.tracking import log_file, log_report_files

    report_dir = io.existing("validation")
    if report_dir is not None and report_dir.is_dir():
        log_report_files(report_dir, "validation", run_id, suffixes=(".json", ".md"))
    elif (report_md := io.get("validation_report_md")) is not None:
        log_file(report_md, "validation", run_id)  # a missing file is a DataError naming it
    config_file = io.existing("config_file")
    if config_file is not None:
        log_file(config_file, "config", run_id)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_config(cfg, Path(tmp) / "config.yaml")
        log_file(Path(tmp) / "config.yaml", "config", run_id)


def _describe(
    cfg: ClinriskConfig, io: Catalog, run_id: str, version: str, alias: str, champion: bool
) -> None:
    from clinrisk.tracking import headline_description, set_description

    aliases = f"@{alias}" + (" and @champion, the first model to pass the gate" if champion else "")
    evaluation = io.get("evaluation")
    metrics_file = evaluation / "metrics.json" if evaluation is not None else None
    headline = read_json(metrics_file).get("headline", {}) if metrics_file and metrics_file.is_file() else {}
    name = cfg.tracking.registered_model_name
    set_description(run_id, headline_description(cfg, headline, f"`{name}` v{version} ({aliases})"))
