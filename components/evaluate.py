"""Component: evaluate the bundle on the patient-disjoint, time-forward test split."""

from kfp import dsl

from clinrisk.images import pipeline_image


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def evaluate(
    config: dsl.Input[dsl.Artifact],
    bundle: dsl.Input[dsl.Model],
    features: dsl.Input[dsl.Dataset],
    mlflow_run_id: str,
    evaluation: dsl.Output[dsl.Artifact],
    report: dsl.Output[dsl.Markdown],
    test_metrics: dsl.Output[dsl.Metrics],
    classification: dsl.Output[dsl.ClassificationMetrics],
    report_html: dsl.Output[dsl.HTML],
) -> None:
    """Metrics vs recorded and true labels, slices, error analysis, report + plots (ROC/confusion for the UI)."""
    from clinrisk.steps import evaluate_step

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
