"""Component: select → train → evaluate → register as one task, for the local runner.

kfp.local starts a fresh Python process per task, and these four steps each import LightGBM and (three of
them) MLflow: ≈ 2.5–3.4 s of imports per task, paid once here instead of four times. The body calls the
same four step functions, in the same order and with the same artefacts, as the one-task-per-step DAG a
cluster runs (``pipeline.fuse_local_steps``); only the task boundary differs. Never cached, like
register: it has registry side effects.
"""

from kfp import dsl

from clinrisk.images import pipeline_image


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def select_train_evaluate_register(
    config: dsl.Input[dsl.Artifact],
    features: dsl.Input[dsl.Dataset],
    raw: dsl.Input[dsl.Dataset],
    validation_report: dsl.Input[dsl.Markdown],
    validated: dsl.Input[dsl.Dataset],
    mlflow_run_id: str,
    selection: dsl.Output[dsl.Artifact],
    selection_metrics: dsl.Output[dsl.Metrics],
    bundle: dsl.Output[dsl.Model],
    train_metrics: dsl.Output[dsl.Metrics],
    evaluation: dsl.Output[dsl.Artifact],
    report: dsl.Output[dsl.Markdown],
    test_metrics: dsl.Output[dsl.Metrics],
    classification: dsl.Output[dsl.ClassificationMetrics],
    report_html: dsl.Output[dsl.HTML],
) -> str:
    """The model half in one process; returns the registered model URI (also tagged on the MLflow run)."""
    from clinrisk.steps import (
        evaluate_step,
        register_step,
        select_features_step,
        tag_model_uri_step,
        train_step,
    )

    select_features_step(config.path, features.path, selection.path, selection_metrics.log_metric)
    train_step(
        config.path,
        features.path,
        selection.path,
        mlflow_run_id,
        bundle.path,
        train_metrics.log_metric,
        raw_dir=raw.path,
    )
    evaluate_step(
        config.path,
        bundle.path,
        features.path,
        mlflow_run_id,
        evaluation.path,
        report.path,
        test_metrics.log_metric,
        classification,
        report_html.path,
    )
    uri = register_step(
        config.path, bundle.path, evaluation.path, validation_report.path, mlflow_run_id, validated.path
    )
    return tag_model_uri_step(config.path, mlflow_run_id, uri)
