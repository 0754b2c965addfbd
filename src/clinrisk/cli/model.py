"""`clinrisk train` and `clinrisk register`: thin wrappers over clinrisk.train and clinrisk.tracking."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clinrisk.cli.common import (
    ConfigOption,
    SetOption,
    check_local_store,
    existing_store,
    handle_errors,
    load,
    output_dir,
)

FeaturesOption = Annotated[
    Path | None, typer.Option("--features", help="features dataset dir (default: run's features/)")
]
SelectedOption = Annotated[
    Path | None,
    typer.Option("--selected", help="selected_features.json (default: run's selection/ file if present)"),
]
OutOption = Annotated[Path | None, typer.Option("--out", help="bundle output dir (default: run's bundle/)")]
BundleOption = Annotated[
    Path | None, typer.Option("--bundle", help="model bundle dir (default: run's bundle/)")
]
AliasOption = Annotated[str, typer.Option("--alias", help="registry alias set on the new version")]


@handle_errors
def train(
    config: ConfigOption = None,
    sets: SetOption = None,
    features: FeaturesOption = None,
    selected: SelectedOption = None,
    out: OutOption = None,
) -> None:
    """Train LightGBM on the training split, calibrate and pick τ on validation, write the model bundle."""
    from clinrisk.errors import DataError
    from clinrisk.stages import Catalog
    from clinrisk.stages import train as train_stage

    cfg = load(config, sets)
    if selected is not None and not selected.exists():
        raise DataError(f"{selected}: not found")
    # the raw dataset beside given features is theirs (its manifest: the bundle's data hash), else the run's
    raw_manifest = features.parent / "raw" / "manifest.json" if features is not None else None
    io = Catalog.for_config(
        cfg, features=features, selection=selected, model_bundle=out, raw_manifest=raw_manifest
    )
    out_dir = output_dir(io.path("model_bundle"))
    io = io.with_paths(model_bundle=out_dir)
    res = train_stage.run(cfg, io)
    md, v, thr = res["metadata"], res["metrics"]["validation"], res["threshold"]
    typer.echo(
        f"bundle {md['bundle_version']}: {len(md['feature_names'])} features, {md['num_trees']} trees, "
        f"objective {md['objective']}, calibration {md['calibration_method']}"
    )
    typer.echo(
        f"validation: AUC {v.get('auc', float('nan')):.4f}  AP {v.get('ap', float('nan')):.4f}  "
        f"Brier {v['brier']:.5f}  O/E {v['oe']:.3f}  (n {v['n']:.0f})"
    )
    typer.echo(f"threshold τ = {thr['value']:.4f} ({thr['method']}): {thr['reason']}")
    typer.echo(f"wrote {out_dir}")


@handle_errors
def register_model(
    config: ConfigOption = None,
    sets: SetOption = None,
    bundle: BundleOption = None,
    alias: AliasOption = "challenger",
) -> None:
    """Log the bundle to MLflow (params, metrics, pyfunc model), register it and set the alias; the run's
    validation report, config and test headline go with it, and the first challenger through the gate
    becomes champion (:mod:`clinrisk.stages.register`, as the pipeline's register step)."""
    from clinrisk.stages import Catalog
    from clinrisk.stages import register as register_stage
    from clinrisk.tracking import tracking_uri

    cfg = load(config, sets)
    io = Catalog.for_config(cfg, model_bundle=bundle)
    root = io.path("run_root")
    check_local_store(cfg, root)  # a missing store is created; a corrupt one is named
    res = register_stage.run(cfg, io, alias=alias)
    if res["version"] is None:
        typer.echo(f"tracking.enabled is false: nothing registered; the model is {res['model_uri']}")
        return
    champion = " and @champion (the first model to pass the gate)" if res["champion"] else ""
    typer.echo(
        f"registered {cfg.tracking.registered_model_name} version {res['version']} (@{alias}{champion}), "
        f"run {res['run_id']}, store {tracking_uri(cfg, root)}"
    )


@handle_errors
def storage_uri(
    model_uri: Annotated[str, typer.Argument(help="models:/<name>/<version> or models:/<name>@<alias>")],
    config: ConfigOption = None,
    sets: SetOption = None,
) -> None:
    """Print the registered bundle's storage URI (what KServe's storage initializer downloads)."""
    from clinrisk.tracking import resolve_storage_uri

    cfg = load(config, sets)
    if not model_uri.startswith("models:/"):
        from clinrisk.errors import ConfigError

        raise ConfigError(f"{model_uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    existing_store(cfg)
    typer.echo(resolve_storage_uri(cfg, model_uri))


def register(app: typer.Typer) -> None:
    """Add `train`, `register` and `storage-uri` to the root app."""
    app.command("train")(train)
    app.command("register")(register_model)
    app.command("storage-uri")(storage_uri)
