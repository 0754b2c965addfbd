"""Component: roll the registered model out to the KServe InferenceService as a canary."""

from kfp import dsl

from clinrisk.images import pipeline_image


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def deploy_canary(
    config: dsl.Input[dsl.Artifact], model_uri: str, inference_service: str, namespace: str, percent: int
) -> str:
    """Patch the InferenceService to serve ``model_uri`` (its bundle's storage URI) to ``percent`` % of
    traffic (cluster tier only)."""
    from clinrisk.steps import deploy_canary_step

    return deploy_canary_step(config.path, model_uri, inference_service, namespace, int(percent))
