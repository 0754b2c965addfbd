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
    from clinrisk.paths import RunPaths
    from clinrisk.stages import Catalog
    from clinrisk.stages import train as train_stage

    cfg = load(config, sets)
    if selected is not None and not selected.exists():
        raise DataError(f"{selected}: not found")
    io = Catalog.for_run(
        RunPaths.for_config(cfg).root, features=features, selection=selected, model_bundle=out
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
    """Log the bundle to MLflow (params, metrics, pyfunc model), register it and set the alias."""
    from clinrisk.bundle import load_bundle
    from clinrisk.paths import RunPaths
    from clinrisk.registry import register_bundle
    from clinrisk.tracking import end_run, log_config, log_metrics, start_run, tracking_uri

    cfg = load(config, sets)
    paths = RunPaths.for_config(cfg)
    bundle_dir = bundle or paths.bundle
    b = load_bundle(bundle_dir)
    check_local_store(cfg, paths.root)  # a missing store is created; a corrupt one is named
    run_id = start_run(cfg, paths.root, tags={"clinrisk.bundle_version": b.version})
    try:
        log_config(cfg, run_id)
        log_metrics(b.metrics, run_id)
        version = register_bundle(cfg, bundle_dir, run_id, alias=alias, run_dir=paths.root)
    except BaseException:
        end_run(run_id, "FAILED")
        raise
    end_run(run_id)
    typer.echo(
        f"registered {cfg.tracking.registered_model_name} version {version} (@{alias}), "
        f"bundle {b.version}, run {run_id}, store {tracking_uri(cfg, paths.root)}"
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
