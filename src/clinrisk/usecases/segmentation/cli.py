"""``clinrisk segmentation train|eval|infer|experiments|serve|manifest``: the use case's own model commands.

Mounted on the root app as a Typer sub-app (its model is not the shared LightGBM, so ``clinrisk train``
does not apply). Every command takes ``--config`` (default ``configs/segmentation/default.yaml``) and
``--set section.key=value``; library errors print ``error: ...`` and exit 2. ``experiments`` is an alias of
the shared ``clinrisk experiments run`` on a suite file (default ``configs/experiments/segmentation.yaml``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from clinrisk.cli.common import ConfigOption, SetOption, handle_errors

DEFAULT_CONFIG = Path("configs/segmentation/default.yaml")
DEFAULT_SUITE = Path("configs/experiments/segmentation.yaml")
CkptOption = Annotated[Path, typer.Option("--ckpt", help="checkpoint file (best.npz of a training run)")]

app = typer.Typer(
    name="segmentation",
    help="Medical image segmentation use case: train, evaluate, infer, compare experiments, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _load(config: Path | None, sets: list[str] | None) -> object:
    from clinrisk.config import load_config
    from clinrisk.errors import ConfigError

    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    cfg = load_config(path, [*(["run.usecase=segmentation"] if path is None else []), *(sets or [])])
    if cfg.run.usecase != "segmentation":
        raise ConfigError(f"{path}: configures use case {cfg.run.usecase!r}, not 'segmentation'")
    return cfg


def _echo(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


@app.command("train")
@handle_errors
def train_cmd(
    config: ConfigOption = None,
    sets: SetOption = None,
    no_track: Annotated[bool, typer.Option("--no-track", help="skip MLflow tracking and registry")] = False,
) -> None:
    """Train the UNet (best checkpoint by validation Dice), log to MLflow, register, maybe promote."""
    from clinrisk.usecases.segmentation.run import run_dir, train_run

    cfg = _load(config, sets)
    metrics = train_run(cfg, track=not no_track)  # type: ignore[arg-type]
    _echo({**metrics, "run_dir": str(run_dir(cfg))})  # type: ignore[arg-type]


@app.command("eval")
@handle_errors
def eval_cmd(ckpt: CkptOption, config: ConfigOption = None, sets: SetOption = None) -> None:
    """Dice/IoU of a checkpoint on the config's validation patients."""
    from clinrisk.usecases.segmentation.run import eval_run

    _echo(eval_run(_load(config, sets), ckpt))  # type: ignore[arg-type]


@app.command("infer")
@handle_errors
def infer_cmd(
    ckpt: CkptOption,
    images: Annotated[list[Path], typer.Argument(help="image files (PNG/JPEG/TIFF)")],
    out: Annotated[Path, typer.Option("--out", help="folder for <stem>_mask.png + predictions.json")] = Path(
        "outputs/segmentation-infer"
    ),
    config: ConfigOption = None,
    sets: SetOption = None,
) -> None:
    """Predict masks for image files."""
    from clinrisk.usecases.segmentation.run import infer_run, params

    cfg = _load(config, sets)
    _echo(infer_run(ckpt, images, out, params(cfg).serve.max_side))  # type: ignore[arg-type]


@app.command("experiments")
@handle_errors
def experiments_cmd(
    suite: Annotated[Path, typer.Argument(help="suite YAML")] = DEFAULT_SUITE,
    sets: SetOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="suite output directory")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=10, help="paired bootstrap B")] = 500,
) -> None:
    """Alias of `clinrisk experiments run SUITE` for the segmentation suite: train every arm, then write
    comparison.md/.json (Δ Dice/IoU vs the baseline, CIs bootstrapped by patient)."""
    from clinrisk.experiments import compare_runs, run_suite

    result = run_suite(suite, "subprocess", list(sets or []), out_dir=out)
    for r in result["runs"]:
        typer.echo(f"{r['name']:<24} {r['status']:<7} {r.get('mlflow_run_id') or r.get('error') or ''}")
    rep = compare_runs(result, n_boot=bootstrap)
    for w in rep["winners"]:
        typer.echo(f"winner: {w['winner']} — {w['reason']}")
    typer.echo(f"comparison: {rep['files']['markdown']}")


@app.command("serve")
@handle_errors
def serve_cmd(ckpt: CkptOption, config: ConfigOption = None, sets: SetOption = None) -> None:
    """Serve a checkpoint over KServe V1 (POST /v1/models/segmentation:predict)."""
    from clinrisk.usecases.segmentation.run import params
    from clinrisk.usecases.segmentation.serving import serve

    cfg = _load(config, sets)
    serve(ckpt, cfg.serving, params(cfg).serve)  # type: ignore[attr-defined,arg-type]


@app.command("manifest")
@handle_errors
def manifest_cmd(
    model_uri: Annotated[
        str, typer.Option("--model-uri", help="models:/segmentation/<version|@alias> or a storage URI")
    ],
    image: Annotated[str | None, typer.Option("--image", help="predictor image (default: see docs)")] = None,
    config: ConfigOption = None,
    sets: SetOption = None,
) -> None:
    """Print the predictor's InferenceService (YAML) for `kubectl apply`; then roll new versions out with
    `clinrisk rollout canary|promote|rollback --config configs/segmentation/default.yaml`."""
    import yaml

    from clinrisk.usecases.segmentation.deploy import inference_service
    from clinrisk.usecases.segmentation.steps import checkpoint_storage_uri

    cfg = _load(config, sets)
    doc = inference_service(cfg, checkpoint_storage_uri(cfg, model_uri), image)  # type: ignore[arg-type]
    typer.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="segmentation")
