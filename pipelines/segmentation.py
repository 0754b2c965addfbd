"""The segmentation pipeline: the same DAG shape as the training pipeline, for kfp.local and Kubeflow.

The data half is the platform's own, shared with the training pipeline
(:func:`pipelines.data_half.add_data_half`: resolve config → plan → generate or ingest, then validate, per
shard under ``dsl.ParallelFor`` → merge with the validation report; bad files are quarantined with reasons
there). The model half is this use case's: train the UNet → evaluate on the validation patients →
register (``@champion`` moves past the promotion margin) (→ canary deploy when ``deploy`` is true). The
whole DAG sits in a ``dsl.ExitHandler`` whose exit task (the platform's) closes the MLflow run a failed step
left RUNNING. This module only wires inputs to outputs; the steps live in
``clinrisk.usecases.segmentation.steps``.

The model steps need the JAX stack, which the shared pipeline image leaves out
(images/exclude-from-image.txt): they name :func:`segmentation_image` (``CLINRISK_SEGMENTATION_IMAGE``), the
pipeline image plus jax, jaxlib and optax (images/segmentation.Dockerfile, ``images/build.sh segmentation``).
kfp.local's SubprocessRunner runs every step in this interpreter; its DockerRunner (``--runner docker``) runs
each step in its component's image.
"""

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from kfp import dsl

from clinrisk import __version__
from clinrisk.config import PipelineConfig, StepResources
from clinrisk.images import IMAGE_REPOSITORY, pipeline_image
from pipelines.data_half import LOCAL_NOOP_WARNING, StepLook, add_data_half, close_run_on_exit, run_form

PIPELINE_NAME = "clinrisk-segmentation"


def segmentation_image() -> str:
    """Image of the model steps: the pipeline image plus the JAX stack (``images/build.sh segmentation``)."""
    return os.environ.get("CLINRISK_SEGMENTATION_IMAGE", f"{IMAGE_REPOSITORY}/segmentation:{__version__}")


def docker_images() -> dict[str, str]:
    """The images this DAG's tasks run in (checked before a ``--runner docker`` run), with how to build them."""
    return {
        pipeline_image(): "build it with `make images` or set CLINRISK_PIPELINE_IMAGE",
        segmentation_image(): "build it with `images/build.sh segmentation` or set CLINRISK_SEGMENTATION_IMAGE",
    }


@dsl.component(base_image=segmentation_image(), install_kfp_package=False)
def train_segmentation(
    config: dsl.Input[dsl.Artifact],
    validated: dsl.Input[dsl.Dataset],
    mlflow_run_id: str,
    model: dsl.Output[dsl.Model],
    train_metrics: dsl.Output[dsl.Metrics],
) -> None:
    """Patient-grouped split, UNet training, best checkpoint by validation Dice."""
    from clinrisk.usecases.segmentation.steps import train_step

    train_step(config.path, validated.path, mlflow_run_id, model.path, train_metrics.log_metric)


@dsl.component(base_image=segmentation_image(), install_kfp_package=False)
def evaluate_segmentation(
    config: dsl.Input[dsl.Artifact],
    validated: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    mlflow_run_id: str,
    evaluation: dsl.Output[dsl.Artifact],
    report: dsl.Output[dsl.Markdown],
    val_metrics: dsl.Output[dsl.Metrics],
) -> None:
    """Dice/IoU of the re-loaded checkpoint on the validation patients, per image, with overlays."""
    from clinrisk.usecases.segmentation.steps import evaluate_step

    evaluate_step(
        config.path,
        validated.path,
        model.path,
        mlflow_run_id,
        evaluation.path,
        report.path,
        val_metrics.log_metric,
    )


@dsl.component(base_image=segmentation_image(), install_kfp_package=False)
def register_segmentation(
    config: dsl.Input[dsl.Artifact],
    model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    validated: dsl.Input[dsl.Dataset],
    mlflow_run_id: str,
) -> str:
    """Register the checkpoint; promote it to @champion past the margin over the re-scored champion."""
    from clinrisk.usecases.segmentation.steps import register_step

    return register_step(config.path, model.path, evaluation.path, validated.path, mlflow_run_id)


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def deploy_segmentation_canary(
    config: dsl.Input[dsl.Artifact], model_uri: str, inference_service: str, namespace: str, percent: int
) -> str:
    """Roll the registered checkpoint out to the segmentation InferenceService as a canary."""
    from clinrisk.usecases.segmentation.steps import deploy_canary_step

    return deploy_canary_step(config.path, model_uri, inference_service, namespace, int(percent))


DISPLAY_NAMES = {
    "resolve_config": "Resolve config",
    "start_tracking": "Start MLflow run",
    "plan_generation": "Plan shards",
    "generate_shard": "Generate or ingest shard",
    "validate_shard": "Validate shard (quarantine)",
    "merge_data": "Merge data + validation report",
    "train": "Train UNet",
    "evaluate": "Evaluate on validation patients",
    "register": "Register (promote past the margin)",
    "deploy_canary": "Canary deploy",
    "finalize_tracking": "Close MLflow run",
}
GROUP_NAMES = {
    "exit_handler": "Segmentation (MLflow run closed on exit)",
    "generate_loop": "Generate + validate each shard",
    "deploy_condition": "Deploy requested",
}


def build_pipeline(
    parallelism: int = 2, resources: Mapping[str, StepResources] | None = None, task_groups: int = 0
) -> Callable[..., Any]:
    """The pipeline function (same parameters as the training pipeline's, so one runner drives both)."""
    look = StepLook(DISPLAY_NAMES, dict(resources) if resources is not None else PipelineConfig().resources)
    warnings.filterwarnings("ignore", message=LOCAL_NOOP_WARNING, category=UserWarning)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Images → validated manifest (quarantine) → UNet → validation Dice → registry (→ canary)",
    )
    def clinrisk_segmentation(
        usecase: str = "segmentation",
        config_name: str = "default",  # configs/<usecase>/<config_name>.yaml
        n_patients: int = 0,  # 0 = the config's value
        seed: int = -1,  # -1 = the config's run.seed
        run_name: str = "",  # "" = the config's run.name
        overrides: list[str] = [],  # noqa: B006 - KFP pipeline parameters take literal defaults
        config_yaml: str = "",  # optional: the whole config as YAML; replaces the named file
        deploy: bool = False,
        inference_service: str = "",  # "" = the config's serving.model_name
        namespace: str = "",  # "" = the config's serving.namespace
        canary_percent: int = 10,
    ) -> str:
        form = run_form(usecase, config_name, config_yaml, overrides, n_patients, seed, run_name)
        finalize = close_run_on_exit(form, look)

        with dsl.ExitHandler(finalize, name=GROUP_NAMES["exit_handler"]):
            half = add_data_half(form, look, parallelism, GROUP_NAMES["generate_loop"], task_groups)
            config, tracking, data = half.config, half.tracking, half.data
            validated = data.outputs["validated"]
            trained = look(
                train_segmentation(config=config, validated=validated, mlflow_run_id=tracking.output), "train"
            )
            # Training logs into the MLflow run: a cached result would leave the run without its epochs.
            trained.set_caching_options(False)
            evaluated = look(
                evaluate_segmentation(
                    config=config,
                    validated=validated,
                    model=trained.outputs["model"],
                    mlflow_run_id=tracking.output,
                ),
                "evaluate",
            )
            evaluated.set_caching_options(False)
            registered = look(
                register_segmentation(
                    config=config,
                    model=trained.outputs["model"],
                    evaluation=evaluated.outputs["evaluation"],
                    validated=validated,
                    mlflow_run_id=tracking.output,
                ),
                "register",
            )
            registered.set_caching_options(False)
            with dsl.If(deploy == True, name=GROUP_NAMES["deploy_condition"]):  # noqa: E712
                look(
                    deploy_segmentation_canary(
                        config=config,
                        model_uri=registered.output,
                        inference_service=inference_service,
                        namespace=namespace,
                        percent=canary_percent,
                    ),
                    "deploy_canary",
                ).set_caching_options(False)
        return finalize.output

    return clinrisk_segmentation
