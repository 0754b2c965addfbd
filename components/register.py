"""Component: log the run's small reports to MLflow and register the bundle as the `challenger`."""

from kfp import dsl

from clinrisk.images import pipeline_image


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def register(
    config: dsl.Input[dsl.Artifact],
    bundle: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    validation_report: dsl.Input[dsl.Markdown],
    validated: dsl.Input[dsl.Dataset],
    mlflow_run_id: str,
) -> str:
    """Register the bundle in the MLflow model registry; returns the model URI (models:/name/version), also
    recorded on the MLflow run for the exit handler (the pipeline's result).

    ``validated`` is read for its validation report only (validation/report.json + report.md)."""
    from clinrisk.steps import register_step, tag_model_uri_step

    uri = register_step(
        config.path, bundle.path, evaluation.path, validation_report.path, mlflow_run_id, validated.path
    )
    return tag_model_uri_step(config.path, mlflow_run_id, uri)
