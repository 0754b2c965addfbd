"""Component: validate the run's config (file text + dotted overrides) and publish it as an artifact."""

from kfp import dsl

from clinrisk.images import pipeline_image


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def resolve_config(
    config_yaml: str,
    overrides: list[str],
    config: dsl.Output[dsl.Artifact],
) -> None:
    """Write the effective config (the run's provenance)."""
    from clinrisk.steps import resolve_config_step

    resolve_config_step(config_yaml, list(overrides), config.path)
