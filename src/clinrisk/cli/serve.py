"""`clinrisk serve`: run the KServe V1 predictor (a thin wrapper over clinrisk.serving.server)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clinrisk.cli.common import ConfigOption, SetOption, existing_store, handle_errors, load

BundleOption = Annotated[Path | None, typer.Option("--bundle", help="model bundle dir to serve")]
ModelUriOption = Annotated[
    str | None,
    typer.Option("--model-uri", help="registered model, e.g. models:/clinrisk@challenger (MLflow registry)"),
]


@handle_errors
def serve(
    config: ConfigOption = None,
    sets: SetOption = None,
    bundle: BundleOption = None,
    model_uri: ModelUriOption = None,
) -> None:
    """Serve the model bundle with KServe (V1: GET /v1/models/<name>, POST /v1/models/<name>:predict).

    Bundle: --bundle, else --model-uri, else /mnt/models (in a KServe pod), else the run's bundle/.
    Bind address, port, limits and the out-of-distribution policy come from the `serving` config section.
    """
    from clinrisk.serving.resolve import resolve_bundle_dir

    cfg = load(config, sets)
    if model_uri is not None and bundle is None:
        existing_store(cfg)  # reading the registry never creates a store (e.g. run from another folder)
    bundle_dir = resolve_bundle_dir(cfg, bundle, model_uri)
    from clinrisk.serving.server import serve as run_server

    run_server(bundle_dir, cfg.serving)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("serve")(serve)
