"""Component: feature selection under a memory budget."""

from kfp import dsl

from clinrisk.images import pipeline_image


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def select_features(
    config: dsl.Input[dsl.Artifact],
    features: dsl.Input[dsl.Dataset],
    selection: dsl.Output[dsl.Artifact],
    selection_metrics: dsl.Output[dsl.Metrics],
) -> None:
    """Cheap filters + stability selection with probes; writes selected_features.json."""
    from clinrisk.steps import select_features_step

    select_features_step(config.path, features.path, selection.path, selection_metrics.log_metric)
