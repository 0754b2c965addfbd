"""`clinrisk experiments run|compare`, `promote`, `drift`, `retrain-if-drifted`, `canary-ab`.

Thin wrappers over :mod:`clinrisk.experiments`, :mod:`clinrisk.promotion` and :mod:`clinrisk.drift`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clinrisk.cli.common import (
    DEFAULT_CONFIG,
    RUNNERS,
    ConfigOption,
    SetOption,
    check_runner,
    existing_store,
    handle_errors,
    load,
    output_dir,
)

if TYPE_CHECKING:
    import polars as pl

experiments_app = typer.Typer(help="Run and compare experiment suites.", no_args_is_help=True)

BundleOption = Annotated[
    Path | None,
    typer.Option("--bundle", help="model bundle directory (default: resolve the `champion` alias)"),
]
LogOption = Annotated[
    Path | None,
    typer.Option("--log", help="request-log root (default: monitoring.request_log_dir or <run>/request_log)"),
]


def _config_path(config: Path | None) -> Path | None:
    return config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)


def _log_dir(cfg: object, log: Path | None) -> Path:
    from clinrisk.paths import RunPaths

    if log is not None:
        return log
    configured = cfg.monitoring.request_log_dir  # type: ignore[attr-defined]
    return Path(configured) if configured else RunPaths.for_config(cfg).root / "request_log"  # type: ignore[arg-type]


def _bundle(cfg: object, bundle: Path | None, alias: str = "champion") -> Path:
    if bundle is not None:
        return bundle
    from clinrisk.tracking import resolve_model

    existing_store(cfg)  # resolving an alias reads the registry: never create an empty store for it
    return resolve_model(cfg, alias)  # type: ignore[arg-type]


def _read_outcomes(path: Path) -> pl.DataFrame:
    """The outcomes table (CSV or Parquet); an unreadable file is a DataError naming it."""
    import polars as pl

    from clinrisk.errors import DataError
    from clinrisk.io import read_parquet

    if path.suffix != ".csv":
        return read_parquet(path)
    try:
        return pl.read_csv(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise DataError(f"--outcomes {path}: unreadable CSV ({type(exc).__name__}: {exc})") from None


@experiments_app.command("run")
@handle_errors
def experiments_run(
    suite: Annotated[Path, typer.Argument(help="suite YAML, e.g. configs/experiments/window.yaml")],
    sets: SetOption = None,
    runner: Annotated[
        str,
        typer.Option(
            "--runner",
            help=f"{' or '.join(RUNNERS)}, as for `pipeline run` (subprocess: kfp.local in this interpreter; "
            "docker: every task in the pipeline image)",
        ),
    ] = "subprocess",
    kfp_host: Annotated[str | None, typer.Option("--kfp-host", help="submit to Kubeflow Pipelines")] = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="run only these runs (+ baselines)")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="suite output directory")] = None,
    compare: Annotated[bool, typer.Option("--compare/--no-compare", help="write the comparison")] = True,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=10, help="paired bootstrap B")] = 200,
    resume: Annotated[
        bool, typer.Option("--resume", help="keep runs already ok in the suite directory; run the rest")
    ] = False,
) -> None:
    """Run every run of a suite through the pipeline (each an MLflow run), then compare them."""
    from clinrisk.experiments import compare_runs, run_suite

    runner = check_runner(runner)
    result = run_suite(suite, runner, sets, kfp_host=kfp_host, out_dir=out, only=only, resume=resume)
    for r in result["runs"]:
        typer.echo(f"{r['name']:<24} {r['status']:<7} {r.get('mlflow_run_id') or r.get('error') or ''}")
    if compare:
        rep = compare_runs(result, n_boot=bootstrap)
        for w in rep["winners"]:
            typer.echo(
                f"winner{' [' + w['cell'] + ']' if w.get('cell') else ''}: {w['winner']} — {w['reason']}"
            )
        typer.echo(f"comparison: {rep['files']['markdown']}")


@experiments_app.command("compare")
@handle_errors
def experiments_compare(
    result: Annotated[Path, typer.Argument(help="suite directory or its suite_result.json")],
    out: Annotated[Path | None, typer.Option("--out", help="where to write comparison.{json,md}")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=10, help="paired bootstrap B")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="seed of the paired bootstrap")] = 0,
) -> None:
    """Compare the runs of a finished suite: metrics, paired deltas vs baseline, winner, links."""
    from clinrisk.experiments import SUITE_RESULT, compare_runs

    path = result / SUITE_RESULT if result.is_dir() else result
    rep = compare_runs(path, out, n_boot=bootstrap, seed=seed)
    for w in rep["winners"]:
        typer.echo(f"winner{' [' + w['cell'] + ']' if w.get('cell') else ''}: {w['winner']} — {w['reason']}")
    typer.echo(f"comparison: {rep['files']['markdown']}")


@handle_errors
def promote(
    config: ConfigOption = None,
    sets: SetOption = None,
    features: Annotated[
        Path | None,
        typer.Option("--features", help="features dataset: score both models on its validation rows"),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="decide and record, move no alias")] = False,
    challenger_latency_ms: Annotated[
        float | None,
        typer.Option("--challenger-latency-ms", help="measured challenger latency (ms) for the latency gate"),
    ] = None,
    champion_latency_ms: Annotated[
        float | None,
        typer.Option("--champion-latency-ms", help="measured champion latency (ms) for the latency gate"),
    ] = None,
    rollout: Annotated[bool, typer.Option("--rollout", help="on a win, start a KServe canary")] = False,
    canary_percent: Annotated[
        int, typer.Option("--canary-percent", min=1, max=99, help="with --rollout: traffic to the canary, %")
    ] = 10,
    namespace: Annotated[
        str | None, typer.Option("--namespace", help="with --rollout: namespace (default: serving.namespace)")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="InferenceService (default: serving.model_name)")
    ] = None,
) -> None:
    """Gate the `challenger` against the `champion`; a win moves the `champion` alias. Always recorded.

    This is the registry gate; moving KServe traffic is `clinrisk rollout ...` (`make rollout-promote`)."""
    from clinrisk.errors import DataError
    from clinrisk.promotion import PROMOTE, run_promotion

    cfg = load(config, sets)
    if features is not None and not features.is_dir():
        raise DataError(f"--features {features}: features dataset directory not found")
    existing_store(cfg)  # the gate reads the registry; with no store there is nothing to gate
    latency = {
        k: v
        for k, v in (("challenger", challenger_latency_ms), ("champion", champion_latency_ms))
        if v is not None
    }
    rec = run_promotion(cfg, features_dir=features, latency_ms=latency or None, dry_run=dry_run)
    typer.echo(f"{rec['gate']['decision']}: {rec['gate']['reason']}")
    typer.echo(f"champion: {rec.get('champion_uri')}  record: {rec['record_dir']}")
    if rollout and rec["gate"]["decision"] == PROMOTE and not dry_run:
        from clinrisk.rollout import KubernetesIsvcApi, Rollout

        isvc = Rollout(
            api=KubernetesIsvcApi(),
            namespace=namespace or cfg.serving.namespace,
            name=name or cfg.serving.model_name,
        )
        state = isvc.canary(rec["champion_uri"], canary_percent)
        typer.echo(f"canary: {state.summary()}")


@handle_errors
def drift(
    config: ConfigOption = None,
    sets: SetOption = None,
    bundle: BundleOption = None,
    log: LogOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="report directory (default <run>/drift)")] = None,
    model_version: Annotated[
        str | None, typer.Option("--model-version", help="default: the bundle's")
    ] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="log the job as an MLflow run")] = True,
) -> None:
    """Compare logged requests with the bundle's training reference; exit 3 when retraining is due."""
    from clinrisk.drift import RETRAIN, run_drift_job
    from clinrisk.paths import RunPaths

    cfg = load(config, sets)
    dest = output_dir(out or RunPaths.for_config(cfg).root / "drift")
    rep = run_drift_job(
        cfg, _bundle(cfg, bundle), _log_dir(cfg, log), dest, model_version=model_version, mlflow=mlflow
    )
    typer.echo(f"{rep['decision']}: " + ("; ".join(rep["reasons"]) or "within bounds"))
    typer.echo(f"report: {dest / 'report.md'}  metrics: {dest / 'metrics.prom'}")
    if rep["decision"] == RETRAIN:
        raise typer.Exit(3)


@handle_errors
def retrain_if_drifted(
    config: ConfigOption = None,
    sets: SetOption = None,
    bundle: BundleOption = None,
    log: LogOption = None,
    kfp_host: Annotated[
        str | None, typer.Option("--kfp-host", help="submit instead of running locally")
    ] = None,
    promote_after: Annotated[bool, typer.Option("--promote/--no-promote", help="gate the new model")] = True,
) -> None:
    """Run the drift job; when it says retrain, run (or submit) the training pipeline, then the gate."""
    from clinrisk.drift import RETRAIN, run_drift_job
    from clinrisk.paths import RunPaths

    cfg = load(config, sets)
    rep = run_drift_job(
        cfg, _bundle(cfg, bundle), _log_dir(cfg, log), RunPaths.for_config(cfg).root / "drift", mlflow=True
    )
    typer.echo(f"drift: {rep['decision']}: " + ("; ".join(rep["reasons"]) or "within bounds"))
    if rep["decision"] != RETRAIN:
        return
    if kfp_host:
        from clinrisk.pipeline_runner import submit_pipeline

        typer.echo(f"submitted KFP run {submit_pipeline(kfp_host, _config_path(config), sets)}")
        return
    from clinrisk.pipeline_runner import run_local
    from clinrisk.promotion import run_promotion

    res = run_local(_config_path(config), sets)
    typer.echo(f"retrained: {res.model_uri}")
    if promote_after:
        from clinrisk.experiments import locate_outputs

        feats = locate_outputs(res.pipeline_dir)["features_dir"]
        rec = run_promotion(cfg, features_dir=Path(feats) if feats else None)
        typer.echo(f"gate: {rec['gate']['decision']}: {rec['gate']['reason']}")


@handle_errors
def canary_ab(
    champion: Annotated[str, typer.Option("--champion", help="champion model_version in the log")],
    canary: Annotated[str, typer.Option("--canary", help="canary model_version in the log")],
    config: ConfigOption = None,
    sets: SetOption = None,
    log: LogOption = None,
    outcomes: Annotated[
        Path | None, typer.Option("--outcomes", help="Parquet/CSV with request_id, label (known later)")
    ] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=10, help="paired bootstrap B")] = 200,
) -> None:
    """Champion vs canary on logged requests: score distributions and, with outcomes, AP/Brier with CIs."""

    from clinrisk.promotion import canary_ab as analyse
    from clinrisk.request_log import read_request_log

    cfg = load(config, sets)
    frame = read_request_log(_log_dir(cfg, log))
    lab = None
    if outcomes is not None:
        lab = _read_outcomes(outcomes)
    rep = analyse(frame, champion, canary, lab, n_boot=bootstrap, seed=cfg.run.seed)
    typer.echo(json.dumps(rep, indent=2, default=str))


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.add_typer(experiments_app, name="experiments")
    app.command("promote")(promote)
    app.command("drift")(drift)
    app.command("retrain-if-drifted")(retrain_if_drifted)
    app.command("canary-ab")(canary_ab)
