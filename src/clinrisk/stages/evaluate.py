"""The evaluate stage: the bundle on the patient-disjoint, time-forward test split.

Core: :func:`clinrisk.evaluate.evaluate_scored` (a loaded bundle and the test split
:func:`clinrisk.evaluate.score_split` scored shard by shard in; the result out). ``run`` reads
``model_bundle`` and ``features``, writes ``evaluation`` (metrics, report, plots, predictions) and, when
the catalog has them, the self-contained ``report_md`` / ``report_html`` files the Kubeflow UI shows; it
logs the headline to KFP (+ ROC and confusion matrix) and to MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clinrisk.bundle import load_bundle
from clinrisk.config import ClinriskConfig
from clinrisk.evaluate import (
    classification_metrics_data,
    dataset_categories,
    evaluate_scored,
    score_split,
    write_outputs,
)
from clinrisk.stages.catalog import Catalog


def run(cfg: ClinriskConfig, io: Catalog) -> dict[str, Any]:
    """Evaluate ``io["model_bundle"]`` on the test split of ``io["features"]`` into ``io["evaluation"]``;
    returns the (JSON-safe) result."""
    bundle_dir, features = io.path("model_bundle"), io.path("features")
    out_dir = io.path("evaluation")
    bundle = load_bundle(bundle_dir)
    scored = score_split(features, bundle, cfg.evaluate)
    result = evaluate_scored(cfg, bundle, scored, dataset_categories(features))
    result["bundle_dir"] = str(bundle_dir)
    result = write_outputs(result, scored.frame, scored.p, out_dir)
    del scored
    _write_ui_reports(io, out_dir)
    io.log_numeric(result["headline"])
    classification = io.extra.get("classification")
    if classification is not None:
        data = classification_metrics_data(result)
        roc = data["roc"]
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
        cm = data["confusion_matrix"]
        classification.log_confusion_matrix(cm["categories"], cm["matrix"])
    if io.mlflow_run_id:
        from clinrisk.tracking import headline_description, log_report_files, log_to_run, set_description

        # test.* beside training's validation.*; the report and plots, never predictions.parquet (row-level
        # data with true labels).
        log_to_run(cfg, io.mlflow_run_id, metrics=result["headline"], prefix="test")
        log_report_files(out_dir, "evaluation", io.mlflow_run_id)
        set_description(io.mlflow_run_id, headline_description(cfg, result["headline"]))
    return result


def _write_ui_reports(io: Catalog, out_dir: Path) -> None:
    """The UI's Markdown/HTML artefacts are single files viewed in a browser: images travel inside them
    as data URIs (a container path would not load there)."""
    report_md_file, report_html_file = io.get("report_md"), io.get("report_html")
    if report_md_file is None and report_html_file is None:
        return
    from clinrisk.report import markdown_to_html, self_contained_markdown

    report_md = self_contained_markdown(out_dir / "report.md")
    if report_md_file is not None:
        report_md_file.parent.mkdir(parents=True, exist_ok=True)
        report_md_file.write_text(report_md)
    if report_html_file is not None:
        report_html_file.parent.mkdir(parents=True, exist_ok=True)
        report_html_file.write_text(markdown_to_html(report_md, "clinrisk evaluation report"))
