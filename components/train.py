"""Component: train, calibrate and threshold the LightGBM model into a bundle."""

from kfp import dsl

from clinrisk.images import pipeline_image


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def train(
    config: dsl.Input[dsl.Artifact],
    features: dsl.Input[dsl.Dataset],
    selection: dsl.Input[dsl.Artifact],
    raw: dsl.Input[dsl.Dataset],
    mlflow_run_id: str,
    bundle: dsl.Output[dsl.Model],
    train_metrics: dsl.Output[dsl.Metrics],
) -> None:
    """Fit on the training split, calibrate on validation, choose the threshold, write the bundle (``raw``:
    its manifest is the bundle's data hash)."""
    from clinrisk.steps import train_step

    train_step(
        config.path,
        features.path,
        selection.path,
        mlflow_run_id,
        bundle.path,
        train_metrics.log_metric,
        raw_dir=raw.path,
    )
