"""Component: open the one MLflow run of this pipeline run, tagged with the KFP run id."""

from kfp import dsl

from clinrisk.images import pipeline_image


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def start_tracking(config: dsl.Input[dsl.Artifact], kfp_run_id: str) -> str:
    """Create the MLflow run (flattened config as params); later steps log into the returned run id."""
    from clinrisk.steps import start_tracking_step

    return start_tracking_step(config.path, kfp_run_id)
