"""Component: resolve the run's config from the pipeline parameters and publish it as an artifact."""

from kfp import dsl

from clinrisk.images import pipeline_image


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def resolve_config(
    config: dsl.Output[dsl.Artifact],
    config_yaml: str = "",
    overrides: list[str] = [],  # noqa: B006 - KFP parameters take literal defaults
    usecase: str = "clinical",
    config_name: str = "default",
    n_patients: int = 0,
    seed: int = -1,
    run_name: str = "",
) -> None:
    """Write the effective config (the run's provenance): a named config file or the pasted YAML, plus the
    common overrides and the dotted ones."""
    from clinrisk.steps import resolve_config_step

    resolve_config_step(
        config_yaml,
        list(overrides),
        config.path,
        usecase=usecase,
        config_name=config_name,
        n_patients=int(n_patients),
        seed=int(seed),
        run_name=run_name,
    )
