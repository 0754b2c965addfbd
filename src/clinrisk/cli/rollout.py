"""`clinrisk rollout canary|status|promote|rollback`: canary rollout of the InferenceService via the API."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from clinrisk.cli.common import ConfigOption, SetOption, existing_store, handle_errors, load

if TYPE_CHECKING:
    from clinrisk.rollout import Rollout

rollout_app = typer.Typer(
    help="Canary rollout of the use case's InferenceService (KServe, Knative mode).", no_args_is_help=True
)

NamespaceOption = Annotated[
    str | None,
    typer.Option("--namespace", "-n", help="namespace of the InferenceService (default: serving.namespace)"),
]
NameOption = Annotated[
    str | None, typer.Option("--name", help="InferenceService name (default: serving.model_name)")
]
ContextOption = Annotated[str | None, typer.Option("--context", help="kubeconfig context (default: current)")]
WaitOption = Annotated[bool, typer.Option("--wait/--no-wait", help="wait until the step has settled")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=1, help="seconds to wait for the step to settle")
]


def _rollout(
    namespace: str | None,
    name: str | None,
    context: str | None,
    config: Path | None = None,
    sets: list[str] | None = None,
) -> Rollout:
    """The InferenceService to act on: explicit options, else the use case's names from the config."""
    from clinrisk.rollout import KubernetesIsvcApi, Rollout

    if namespace is None or name is None:
        serving = load(config, sets).serving
        namespace = namespace or serving.namespace
        name = name or serving.model_name
    return Rollout(KubernetesIsvcApi(context=context), namespace=namespace, name=name)


@rollout_app.command("status")
@handle_errors
def status(
    namespace: NamespaceOption = None,
    name: NameOption = None,
    context: ContextOption = None,
    config: ConfigOption = None,
    sets: SetOption = None,
) -> None:
    """Print phase, generations, model URIs and the traffic split."""
    r = _rollout(namespace, name, context, config, sets)
    typer.echo(r.status().summary())


@rollout_app.command("canary")
@handle_errors
def canary(
    percent: Annotated[int, typer.Option("--percent", "-p", help="traffic to the canary, 0..100")],
    model_uri: Annotated[
        str | None, typer.Option("--model-uri", help="bundle to canary (omit to shift a running canary)")
    ] = None,
    namespace: NamespaceOption = None,
    name: NameOption = None,
    context: ContextOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = 600,
    config: ConfigOption = None,
    sets: SetOption = None,
) -> None:
    """Start a canary of --model-uri at --percent %, or shift the running canary's traffic (a models:/ URI
    is resolved to its bundle's storage URI first, as the pipeline's deploy step does)."""
    from clinrisk.rollout import KubernetesIsvcApi, validate_percent
    from clinrisk.stages import Catalog
    from clinrisk.stages import deploy as deploy_stage

    validate_percent(percent)  # fail before touching the registry or the cluster
    cfg = load(config, sets)
    if model_uri is not None and model_uri.startswith("models:/"):
        existing_store(cfg)  # resolving reads the registry: never create an empty local store for it
    state = deploy_stage.run(
        cfg,
        Catalog.for_config(cfg),
        model_uri,
        percent,
        api=KubernetesIsvcApi(context=context),
        namespace=namespace,
        name=name,
        wait=wait,
        timeout_s=timeout,
    )
    typer.echo(state.summary())


@rollout_app.command("promote")
@handle_errors
def promote(
    namespace: NamespaceOption = None,
    name: NameOption = None,
    context: ContextOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = 600,
    prometheus_url: Annotated[
        str | None, typer.Option("--prometheus-url", help="gate on canary metrics from this Prometheus")
    ] = None,
    max_error_rate: Annotated[float, typer.Option(help="gate: max canary 5xx rate")] = 0.01,
    max_p95_latency: Annotated[float, typer.Option(help="gate: max canary p95 latency, seconds")] = 0.5,
    min_requests: Annotated[int, typer.Option(help="gate: min canary requests in the window")] = 50,
    window: Annotated[str, typer.Option(help="gate: PromQL range window")] = "5m",
    config: ConfigOption = None,
    sets: SetOption = None,
) -> None:
    """Send 100 % to the canary (optionally only if its Prometheus metrics are within bounds)."""
    from clinrisk.rollout import GateBounds, RolloutState, evaluate_gate, query_canary_metrics

    r = _rollout(namespace, name, context, config, sets)
    gate = None
    if prometheus_url:
        bounds = GateBounds(max_error_rate, max_p95_latency, min_requests)

        def gate(state: RolloutState) -> list[str]:
            revision = state.latest_ready or ""
            return evaluate_gate(query_canary_metrics(prometheus_url, revision, r.namespace, window), bounds)

    typer.echo(r.promote(wait=wait, timeout_s=timeout, gate=gate).summary())


@rollout_app.command("rollback")
@handle_errors
def rollback(
    namespace: NamespaceOption = None,
    name: NameOption = None,
    context: ContextOption = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = 600,
    config: ConfigOption = None,
    sets: SetOption = None,
) -> None:
    """Restore the previous model URI (traffic returns to the previous revision at once during a canary)."""
    r = _rollout(namespace, name, context, config, sets)
    typer.echo(r.rollback(wait=wait, timeout_s=timeout).summary())


def register(app: typer.Typer) -> None:
    """Add ``clinrisk rollout ...`` to the root app."""
    app.add_typer(rollout_app, name="rollout")
