"""Components: fit the frozen feature spec, build features per shard, merge the feature shards."""

from kfp import dsl

from clinrisk.images import pipeline_image


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def fit_feature_spec(
    config: dsl.Input[dsl.Artifact],
    validated: dsl.Input[dsl.Dataset],
    feature_spec: dsl.Output[dsl.Artifact],
) -> None:
    """Freeze categories (training patients only) and the feature list into feature_spec.json."""
    from clinrisk.steps import fit_feature_spec_step

    fit_feature_spec_step(config.path, validated.path, feature_spec.path)


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def build_features_shard(
    config: dsl.Input[dsl.Artifact],
    feature_spec: dsl.Input[dsl.Artifact],
    validated: dsl.Input[dsl.Dataset],
    raw: dsl.Input[dsl.Dataset],
    plan: dsl.Input[dsl.Artifact],
    shard: int,
    features_shard: dsl.Output[dsl.Dataset],
) -> None:
    """Units, rolling windows, labels and splits for one shard (the same function serving uses)."""
    from clinrisk.steps import build_features_shard_step

    build_features_shard_step(
        config.path, feature_spec.path, validated.path, raw.path, int(shard), features_shard.path, plan.path
    )


@dsl.component(base_image=pipeline_image(), install_kfp_package=False)
def merge_features(
    config: dsl.Input[dsl.Artifact],
    feature_spec: dsl.Input[dsl.Artifact],
    features_shards: dsl.Input[list[dsl.Dataset]],
    features: dsl.Output[dsl.Dataset],
) -> None:
    """Collect the feature shards into one dataset that passes the feature schema."""
    from clinrisk.steps import merge_features_step

    merge_features_step(config.path, feature_spec.path, [a.path for a in features_shards], features.path)
