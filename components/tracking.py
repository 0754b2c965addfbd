"""Components: open the one MLflow run of this pipeline run, and close it from the DAG's exit handler."""

from kfp import dsl

from clinrisk.images import pipeline_image


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def start_tracking(config: dsl.Input[dsl.Artifact], kfp_run_id: str) -> str:
    """Create the MLflow run (flattened config as params); later steps log into the returned run id."""
    from clinrisk.steps import start_tracking_step

    return start_tracking_step(config.path, kfp_run_id)


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def finalize_tracking(
    usecase: str,
    config_name: str,
    config_yaml: str,
    overrides: list[str],
    n_patients: int,
    seed: int,
    run_name: str,
    kfp_run_id: str,
    status: dsl.PipelineTaskFinalStatus,
) -> str:
    """Exit handler: the pipeline run's MLflow run, if still RUNNING when the DAG ends, is marked FAILED
    (KILLED if cancelled). An exit task may take only pipeline parameters, so it resolves the run's config
    from them (as resolve_config does) and finds the MLflow run by its ``kfp.run_id`` tag."""
    from clinrisk.pipeline_params import from_form
    from clinrisk.steps import finalize_tracking_step

    params = from_form(usecase, config_name, config_yaml, overrides, n_patients, seed, run_name)
    return finalize_tracking_step(params, kfp_run_id, status.state, status.error_message or "")
