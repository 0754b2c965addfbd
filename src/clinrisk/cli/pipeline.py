"""`clinrisk pipeline run|compile|submit` and the top-level `clinrisk run` (the main job)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clinrisk.cli.common import (
    ConfigOption,
    SetOption,
    UsecaseOption,
    check_local_store,
    config_source,
    handle_errors,
    load,
)
from clinrisk.interrupts import interruptible
from clinrisk.stages.catalog import Catalog

pipeline_app = typer.Typer(
    help="Run, compile or submit the Kubeflow training pipeline.", no_args_is_help=True
)

RunnerOption = Annotated[
    str,
    typer.Option("--runner", help="subprocess (tier 1, this interpreter) or docker (tier 2, pipeline image)"),
]
ResumeOption = Annotated[
    str | None,
    typer.Option(
        "--resume",
        help="id of an earlier run (runs/<id>) of the same config: reuse its finished steps, re-run the rest",
    ),
]
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="stream every task's full output (default: one line per step, logs in files)"
    ),
]


def _source(
    config: Path | None, sets: list[str] | None, usecase: str | None
) -> tuple[Path | None, list[str]]:
    """Config file + overrides for the pipeline, checked once here (unknown use case, bad keys: exit 2)."""
    check_local_store(load(config, sets, usecase=usecase))  # a corrupt mlflow.db: one line, before any task
    path, lead = config_source(config, usecase)
    return path, [*lead, *(sets or [])]


@pipeline_app.command("run")
@handle_errors
def pipeline_run(
    config: ConfigOption = None,
    sets: SetOption = None,
    runner: RunnerOption = "subprocess",
    usecase: UsecaseOption = None,
    resume: ResumeOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Run the whole training pipeline locally with kfp.local (one run at a time per run root)."""
    from clinrisk.errors import ConfigError
    from clinrisk.pipeline_runner import run_local

    if runner not in ("subprocess", "docker"):
        raise ConfigError(f"--runner: unknown runner {runner!r} (subprocess or docker)")
    with interruptible():
        result = run_local(
            *_source(config, sets, usecase),
            runner=runner,  # type: ignore[arg-type]
            resume=resume,
            verbose=verbose,
        )
    _print_locations(result.run_root, result.pipeline_dir, result.model_uri, result.tracking_uri)


def _print_locations(run_root: Path, pipeline_dir: Path, model_uri: str, tracking_uri: str) -> None:
    typer.echo(f"pipeline outputs : {pipeline_dir}  (also {run_root / 'latest'})")
    evaluation = Catalog.for_kfp_run(pipeline_dir).path("evaluation")
    reports = sorted(evaluation.parent.glob("report*")) + sorted(evaluation.glob("report.md"))
    for r in reports:
        typer.echo(f"evaluation report: {r}")
    typer.echo(f"registered model : {model_uri}")
    typer.echo(f"MLflow store     : {tracking_uri}")
    typer.echo(f"MLflow UI        : .venv/bin/mlflow ui --backend-store-uri {tracking_uri} --port 5000")


@pipeline_app.command("compile")
@handle_errors
def pipeline_compile(
    out: Annotated[Path, typer.Option("--out", help="IR YAML to write")] = Path(
        "outputs/kfp/clinrisk-training.yaml"
    ),
    parallelism: Annotated[int, typer.Option(min=1, help="max concurrent shard tasks")] = 2,
    config: ConfigOption = None,
    sets: SetOption = None,
    usecase: UsecaseOption = None,
) -> None:
    """Compile the pipeline to its IR YAML (no server needed); pod resources from the config's
    pipeline.resources."""
    from clinrisk.pipeline_runner import compile_pipeline

    typer.echo(str(compile_pipeline(out, parallelism, cfg=load(config, sets, usecase=usecase))))


@pipeline_app.command("submit")
@handle_errors
def pipeline_submit(
    host: Annotated[str, typer.Option("--host", help="KFP API endpoint, e.g. http://localhost:8080")],
    config: ConfigOption = None,
    sets: SetOption = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="KFP experiment (default: tracking.experiment_name)")
    ] = None,
    schedule: Annotated[str | None, typer.Option("--schedule", help="6-field cron: recurring run")] = None,
    deploy: Annotated[bool, typer.Option("--deploy/--no-deploy", help="canary-deploy the new model")] = False,
    usecase: UsecaseOption = None,
) -> None:
    """Submit the pipeline to Kubeflow Pipelines as a one-off or recurring run."""
    from clinrisk.pipeline_runner import submit_pipeline

    path, overrides = _source(config, sets, usecase)
    run_id = submit_pipeline(host, path, overrides, experiment=experiment, schedule=schedule, deploy=deploy)
    typer.echo(f"submitted: {run_id}")


@handle_errors
def run_main_job(
    config: ConfigOption = None,
    sets: SetOption = None,
    runner: RunnerOption = "subprocess",
    smoke: Annotated[
        bool, typer.Option("--smoke/--no-smoke", help="serve the new model and send a request")
    ] = True,
    usecase: UsecaseOption = None,
    verbose: VerboseOption = False,
) -> None:
    """The main job: run the training pipeline, then serve the new model and send it a real V1 request."""
    import json

    from clinrisk.pipeline_runner import effective_local_config, run_local
    from clinrisk.smoke import serving_smoke_test

    path, overrides = _source(config, sets, usecase)
    with interruptible():
        result = run_local(path, overrides, runner=runner, verbose=verbose)  # type: ignore[arg-type]
    if smoke:
        cfg = effective_local_config(path, overrides)
        out = serving_smoke_test(cfg, result.model_uri, result.pipeline_dir / "merge-data" / "validated")
        typer.echo(f"serving smoke test: POST {out['url']}/v1/models/{cfg.serving.model_name}:predict")
        text = json.dumps(out["response"])  # one line (was a 2,000-character JSON block)
        typer.echo(f"response          : {text[:300]}{' …' if len(text) > 300 else ''}")
    _print_locations(result.run_root, result.pipeline_dir, result.model_uri, result.tracking_uri)


@handle_errors
def check_store_command(
    config: ConfigOption = None,
    sets: SetOption = None,
    usecase: UsecaseOption = None,
    path: Annotated[
        Path | None,
        typer.Option("--path", help="an output dir or run root to check instead of the config's run root"),
    ] = None,
) -> None:
    """Check that runs, `latest`, the MLflow runs and the registry are consistent (exit 1 on problems)."""
    from clinrisk.integrity import check_store
    from clinrisk.pipeline_runner import effective_local_config

    if path is not None:
        problems = check_store(path)
        where = str(path)
    else:
        cfg = effective_local_config(*_source(config, sets, usecase))
        problems = check_store(cfg)
        where = str(cfg.run.output_dir)
    for problem in problems:
        typer.echo(f"problem: {problem}")
    if problems:
        raise typer.Exit(1)
    typer.echo(f"consistent: {where}")


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to the root app."""
    app.add_typer(pipeline_app, name="pipeline")
    app.command("run")(run_main_job)
    app.command("check-store")(check_store_command)
