"""Canary rollout of the clinrisk InferenceService (KServe, Knative mode): canary → promote → rollback.

Three layers:
- pure functions: :func:`read_state` turns an InferenceService document (spec + status) into a
  :class:`RolloutState` with a :class:`Phase`; :func:`plan_canary`, :func:`plan_promote` and
  :func:`plan_rollback` compute the JSON merge patch of a step or refuse it with a clear error;
  :func:`evaluate_gate` checks canary metrics against bounds;
- :class:`Rollout`: orchestration over a small :class:`IsvcApi` (get + merge-patch), waits for the step to
  settle (observedGeneration caught up, Ready, latest revision ready);
- :class:`KubernetesIsvcApi`: the thin client on ``kubernetes.client.CustomObjectsApi``.

The model URI lives in the predictor container's ``STORAGE_URI`` env (KServe's storage initializer reads
it for custom containers); the previous URI is kept in an annotation so rollback can restore it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from clinrisk.errors import ClinriskError

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
CONTAINER_NAME = "kserve-container"
STORAGE_ENV = "STORAGE_URI"
ANNOTATION_MODEL_URI = "clinrisk.io/model-uri"
ANNOTATION_PREVIOUS_URI = "clinrisk.io/previous-model-uri"
ANNOTATION_ROLLED_BACK_URI = "clinrisk.io/rolled-back-model-uri"


class RolloutError(ClinriskError):
    """A rollout step that cannot be done; the message names the InferenceService and the reason."""


class UnsettledError(RolloutError):
    """The previous step has not settled yet (reconciling, or its revision is not ready)."""


class NotFoundError(RolloutError):
    """The InferenceService does not exist."""


class Phase(StrEnum):
    """Where an InferenceService is in the rollout cycle."""

    RECONCILING = "Reconciling"  # controller has not observed the latest spec yet
    DEPLOYING = "Deploying"  # first deployment, nothing rolled out yet
    STABLE = "Stable"  # one revision takes 100 %
    UPDATING = "Updating"  # full rollout of a new revision that is not ready yet
    CANARY = "Canary"  # traffic split, canary revision ready
    CANARY_UNREADY = "CanaryUnready"  # canary requested, its revision not ready
    ROLLED_BACK = "RolledBack"  # rollback during a canary: canaryTrafficPercent 0, previous revision 100 %


SETTLED_PHASES = frozenset({Phase.STABLE, Phase.CANARY, Phase.ROLLED_BACK})


@dataclass(frozen=True)
class TrafficTarget:
    """One entry of ``status.components.predictor.traffic``."""

    revision: str | None
    percent: int
    latest: bool
    tag: str | None


@dataclass(frozen=True)
class RolloutState:
    """What the rollout logic needs from an InferenceService document."""

    name: str
    namespace: str
    phase: Phase
    generation: int | None
    observed_generation: int | None
    ready: bool
    ready_message: str
    model_uri: str | None
    previous_model_uri: str | None
    canary_percent: int | None
    traffic: tuple[TrafficTarget, ...]
    latest_created: str | None
    latest_ready: str | None
    latest_rolledout: str | None
    previous_rolledout: str | None
    url: str | None = None

    @property
    def settled(self) -> bool:
        """True when the last step has finished: the next step may start."""
        return self.phase in SETTLED_PHASES

    @property
    def latest_percent(self) -> int:
        """Traffic share of the latest revision (0 when no traffic is reported)."""
        return sum(t.percent for t in self.traffic if t.latest)

    def summary(self) -> str:
        """One line for humans (``clinrisk rollout status``)."""
        split = ", ".join(
            f"{t.revision or '?'}{'(latest)' if t.latest else ''}{'[' + t.tag + ']' if t.tag else ''}={t.percent}%"
            for t in self.traffic
        )
        return (
            f"{self.namespace}/{self.name}: {self.phase.value} ready={self.ready} "
            f"generation={self.generation} observed={self.observed_generation} "
            f"canaryTrafficPercent={self.canary_percent} model={self.model_uri} "
            f"previous={self.previous_model_uri} traffic=[{split}]"
        )


# ------------------------------------------------------------------------------------------ reading


def _predictor(isvc: Mapping[str, Any]) -> Mapping[str, Any]:
    return (isvc.get("spec") or {}).get("predictor") or {}


def _container(isvc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for c in _predictor(isvc).get("containers") or []:
        if c.get("name") == CONTAINER_NAME:
            return c
    return None


def _ident(isvc: Mapping[str, Any]) -> str:
    meta = isvc.get("metadata") or {}
    return f"InferenceService {meta.get('namespace', '?')}/{meta.get('name', '?')}"


def model_uri_of(isvc: Mapping[str, Any]) -> str | None:
    """The bundle URI the predictor serves (container ``STORAGE_URI``, else ``storageUris[0]``)."""
    container = _container(isvc)
    if container is not None:
        for env in container.get("env") or []:
            if env.get("name") == STORAGE_ENV and env.get("value"):
                return str(env["value"])
    uris = _predictor(isvc).get("storageUris") or []
    if uris and isinstance(uris[0], Mapping) and uris[0].get("uri"):
        return str(uris[0]["uri"])
    return None


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def read_state(isvc: Mapping[str, Any]) -> RolloutState:
    """Classify an InferenceService document (spec + status) into a :class:`RolloutState`."""
    meta = isvc.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    status = isvc.get("status") or {}
    pred_status = (status.get("components") or {}).get("predictor") or {}
    traffic = tuple(
        TrafficTarget(
            revision=t.get("revisionName"),
            percent=int(t.get("percent") or 0),
            latest=bool(t.get("latestRevision")),
            tag=t.get("tag"),
        )
        for t in pred_status.get("traffic") or []
    )
    ready_cond = _condition(status, "Ready") or {}
    ready = ready_cond.get("status") == "True"
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    pct = _predictor(isvc).get("canaryTrafficPercent")
    latest_created = pred_status.get("latestCreatedRevision")
    latest_ready = pred_status.get("latestReadyRevision")
    latest_rolledout = pred_status.get("latestRolledoutRevision")
    latest_is_ready = ready and (latest_created is None or latest_created == latest_ready)

    if generation is not None and (observed is None or observed < generation):
        phase = Phase.RECONCILING
    elif not latest_is_ready:
        if latest_rolledout is None:
            phase = Phase.DEPLOYING
        elif pct is not None and pct < 100:
            phase = Phase.CANARY_UNREADY
        else:
            phase = Phase.UPDATING
    elif pct is None or pct >= 100:
        phase = Phase.STABLE
    elif pct == 0 and annotations.get(ANNOTATION_ROLLED_BACK_URI):
        # Only a rollback records the URI it rolled back from; `canary --percent 0` (a dark canary that
        # takes no traffic yet) also has canaryTrafficPercent 0 but is still a canary.
        phase = Phase.ROLLED_BACK
    else:
        phase = Phase.CANARY

    return RolloutState(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        phase=phase,
        generation=generation,
        observed_generation=observed,
        ready=ready,
        ready_message=str(ready_cond.get("message") or ready_cond.get("reason") or ""),
        model_uri=model_uri_of(isvc),
        previous_model_uri=annotations.get(ANNOTATION_PREVIOUS_URI),
        canary_percent=pct,
        traffic=traffic,
        latest_created=latest_created,
        latest_ready=latest_ready,
        latest_rolledout=latest_rolledout,
        previous_rolledout=pred_status.get("previousRolledoutRevision"),
        url=status.get("url"),
    )


# ------------------------------------------------------------------------------------------ planning


def validate_percent(percent: Any) -> int:
    """An integer traffic percent in 0..100, or a RolloutError naming the value."""
    if isinstance(percent, bool) or not isinstance(percent, int):
        raise RolloutError(f"canary percent {percent!r}: must be an integer in 0..100")
    if not 0 <= percent <= 100:
        raise RolloutError(f"canary percent {percent}: must be within 0..100")
    return percent


def validate_model_uri(uri: str | None) -> str:
    """A non-empty storage URI with a scheme KServe's storage initializer understands."""
    schemes = ("s3://", "gs://", "pvc://", "http://", "https://", "hdfs://", "webhdfs://", "oci://", "hf://")
    if uri is None or not uri.strip():
        raise RolloutError("model URI: missing (pass --model-uri s3://…, gs://… or pvc://…)")
    if not uri.startswith(schemes):
        raise RolloutError(f"model URI {uri!r}: unsupported scheme (expected one of {', '.join(schemes)})")
    return uri


def _containers_with_uri(isvc: Mapping[str, Any], uri: str) -> list[dict[str, Any]]:
    """The full containers list with STORAGE_URI replaced (a merge patch replaces lists wholesale)."""
    containers = copy.deepcopy(list(_predictor(isvc).get("containers") or []))
    for c in containers:
        if c.get("name") == CONTAINER_NAME:
            env = [e for e in c.get("env") or [] if e.get("name") != STORAGE_ENV]
            c["env"] = [{"name": STORAGE_ENV, "value": uri}, *env]
            return containers
    raise RolloutError(f"{_ident(isvc)}: no predictor container named {CONTAINER_NAME!r}")


def _meta_patch(isvc: Mapping[str, Any], annotations: Mapping[str, str | None]) -> dict[str, Any]:
    meta: dict[str, Any] = {"annotations": dict(annotations)}
    # resourceVersion makes the patch conditional: a concurrent change yields 409, not a lost update.
    rv = (isvc.get("metadata") or {}).get("resourceVersion")
    if rv:
        meta["resourceVersion"] = rv
    return meta


def _require_settled(state: RolloutState, ident: str, step: str) -> None:
    if not state.settled:
        raise UnsettledError(
            f"{ident}: cannot {step} while the previous step is unsettled (phase {state.phase.value}, "
            f"generation {state.generation}, observed {state.observed_generation}, "
            f"ready={state.ready}{': ' + state.ready_message if state.ready_message else ''})"
        )


def plan_canary(isvc: Mapping[str, Any], model_uri: str | None, percent: int) -> dict[str, Any]:
    """Merge patch that starts a canary of ``model_uri`` at ``percent`` %, or shifts a running canary.

    Starting needs a settled Stable/RolledBack service and a new URI; shifting needs a settled Canary and
    either no URI or the canary's own URI.
    """
    percent = validate_percent(percent)
    state = read_state(isvc)
    ident = _ident(isvc)
    _require_settled(state, ident, "change canary traffic")
    if state.phase is Phase.CANARY:
        if model_uri is not None and model_uri != state.model_uri:
            raise RolloutError(
                f"{ident}: a canary of {state.model_uri} is in progress; promote or roll it back "
                f"before starting a canary of {model_uri}"
            )
        return {"spec": {"predictor": {"canaryTrafficPercent": percent}}, "metadata": _meta_patch(isvc, {})}
    uri = validate_model_uri(model_uri)
    if uri == state.model_uri:
        raise RolloutError(f"{ident}: already serves {uri}; a canary needs a different model URI")
    if state.latest_rolledout is None:
        raise RolloutError(f"{ident}: no rolled-out revision to split traffic with (first deployment)")
    return {
        "metadata": _meta_patch(
            isvc,
            {
                ANNOTATION_MODEL_URI: uri,
                ANNOTATION_PREVIOUS_URI: state.model_uri,
                ANNOTATION_ROLLED_BACK_URI: None,
            },
        ),
        "spec": {
            "predictor": {"canaryTrafficPercent": percent, "containers": _containers_with_uri(isvc, uri)}
        },
    }


def plan_promote(isvc: Mapping[str, Any]) -> dict[str, Any]:
    """Merge patch that sends 100 % to the latest revision (drops canaryTrafficPercent).

    From Canary this promotes the canary model; from RolledBack it finalises the rollback (the restored
    model's new revision takes all traffic).
    """
    state = read_state(isvc)
    ident = _ident(isvc)
    _require_settled(state, ident, "promote")
    if state.phase is Phase.STABLE:
        raise RolloutError(f"{ident}: no canary to promote (latest revision already takes 100 %)")
    if state.phase is Phase.CANARY and state.canary_percent == 0:
        raise RolloutError(
            f"{ident}: the canary of {state.model_uri} is at 0 % and has taken no traffic; "
            "shift it first (rollout canary --percent N) or roll it back"
        )
    return {"spec": {"predictor": {"canaryTrafficPercent": None}}, "metadata": _meta_patch(isvc, {})}


def plan_rollback(isvc: Mapping[str, Any]) -> dict[str, Any]:
    """Merge patch that restores the previous model URI.

    During a canary (ready or not) traffic goes back to the last rolled-out revision at once
    (canaryTrafficPercent 0); after a promote the previous URI is rolled out again in full.
    """
    state = read_state(isvc)
    ident = _ident(isvc)
    if state.phase is Phase.RECONCILING:
        raise UnsettledError(
            f"{ident}: cannot roll back while the controller has not observed generation "
            f"{state.generation} (observed {state.observed_generation}); retry when it has"
        )
    if state.phase is Phase.ROLLED_BACK:
        raise RolloutError(f"{ident}: already rolled back (canaryTrafficPercent 0); promote to finalise")
    if state.phase is Phase.DEPLOYING:
        raise RolloutError(f"{ident}: first deployment in progress, there is no previous model to restore")
    previous = state.previous_model_uri
    if not previous:
        raise RolloutError(
            f"{ident}: no previous model URI recorded (annotation {ANNOTATION_PREVIOUS_URI}); nothing to roll back to"
        )
    annotations = {
        ANNOTATION_MODEL_URI: previous,
        ANNOTATION_PREVIOUS_URI: None,
        ANNOTATION_ROLLED_BACK_URI: state.model_uri,
    }
    in_canary = state.phase in (Phase.CANARY, Phase.CANARY_UNREADY)
    return {
        "metadata": _meta_patch(isvc, annotations),
        "spec": {
            "predictor": {
                "canaryTrafficPercent": 0 if in_canary else None,
                "containers": _containers_with_uri(isvc, previous),
            }
        },
    }


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what the API server applies for ``application/merge-patch+json``)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(copy.deepcopy(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


# ------------------------------------------------------------------------------------------ gate


@dataclass(frozen=True)
class GateBounds:
    """Promotion bounds for the canary revision."""

    max_error_rate: float = 0.01
    max_p95_latency_s: float = 0.5
    min_requests: int = 50


@dataclass(frozen=True)
class CanaryMetrics:
    """Observed canary behaviour over the gate window."""

    requests: float
    error_rate: float
    p95_latency_s: float


def evaluate_gate(metrics: CanaryMetrics, bounds: GateBounds) -> list[str]:
    """Reasons the canary must not be promoted (empty = within bounds)."""
    problems = []
    if metrics.requests < bounds.min_requests:
        problems.append(
            f"only {metrics.requests:.0f} canary requests (< {bounds.min_requests}): not enough evidence"
        )
    if metrics.error_rate != metrics.error_rate or metrics.error_rate > bounds.max_error_rate:
        problems.append(f"error rate {metrics.error_rate:.4f} > {bounds.max_error_rate}")
    if metrics.p95_latency_s != metrics.p95_latency_s or metrics.p95_latency_s > bounds.max_p95_latency_s:
        problems.append(f"p95 latency {metrics.p95_latency_s:.3f}s > {bounds.max_p95_latency_s}s")
    return problems


# The gate reads what the serving image itself exports (clinrisk.serving.metrics and KServe's ModelServer),
# not Knative's queue-proxy: Knative 1.19 moved queue-proxy to OpenTelemetry and dropped the OpenCensus
# series `revision_request_count` / `revision_request_latencies_bucket` the gate used to query. Nothing in
# `make cluster` installs Prometheus: the gate is opt-in (`--prometheus-url`) and needs a Prometheus that
# scrapes the predictor pods with the usual `namespace` and `pod` target labels. Knative names a revision's
# pods `<revision>-deployment-<hash>-<hash>`, which is how the canary's series are selected.
REQUESTS_METRIC = "clinrisk_requests_total"  # counter, label outcome (ok/invalid/.../error)
LATENCY_METRIC = "request_predict_seconds_bucket"  # KServe ModelServer predict-latency histogram
ERROR_OUTCOME = "error"


def prometheus_queries(revision: str, namespace: str, window: str = "5m") -> dict[str, str]:
    """PromQL for a revision's request count, server-error rate and p95 predict latency."""
    sel = f'namespace="{namespace}",pod=~"{revision}-deployment-.*"'
    return {
        "requests": f"sum(increase({REQUESTS_METRIC}{{{sel}}}[{window}]))",
        "error_rate": (
            f'sum(rate({REQUESTS_METRIC}{{{sel},outcome="{ERROR_OUTCOME}"}}[{window}]))'
            f" / sum(rate({REQUESTS_METRIC}{{{sel}}}[{window}]))"
        ),
        "p95_latency_s": f"histogram_quantile(0.95, sum by (le) (rate({LATENCY_METRIC}{{{sel}}}[{window}])))",
    }


def query_canary_metrics(
    prometheus_url: str, revision: str, namespace: str, window: str = "5m"
) -> CanaryMetrics:
    """Ask Prometheus' HTTP API for the canary revision's metrics (NaN when a series is empty)."""
    import httpx

    values: dict[str, float] = {}
    for key, promql in prometheus_queries(revision, namespace, window).items():
        try:
            resp = httpx.get(
                f"{prometheus_url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=10
            )
            resp.raise_for_status()
            result = resp.json()["data"]["result"]
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise RolloutError(f"Prometheus {prometheus_url}: query {key} failed ({exc})") from exc
        values[key] = float(result[0]["value"][1]) if result else float("nan")
    if values["requests"] != values["requests"]:
        # No series at all is a scrape problem, not "0 requests": say so instead of failing obscurely.
        raise RolloutError(
            f"Prometheus {prometheus_url}: no {REQUESTS_METRIC} series for pods of revision {revision} in "
            f"namespace {namespace}; is Prometheus scraping the predictor pods' /metrics?"
        )
    requests = values["requests"]
    return CanaryMetrics(
        requests=requests, error_rate=values["error_rate"], p95_latency_s=values["p95_latency_s"]
    )


# ------------------------------------------------------------------------------------------ client


class IsvcApi(Protocol):
    """The two API calls rollout needs."""

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        """Return the InferenceService or raise NotFoundError."""
        ...

    def patch(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a JSON merge patch and return the updated object."""
        ...


class KubernetesIsvcApi:
    """:class:`IsvcApi` on ``kubernetes.client.CustomObjectsApi`` (merge-patch+json)."""

    def __init__(self, context: str | None = None, custom_api: Any = None) -> None:
        if custom_api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                try:
                    config.load_kube_config(context=context)
                except (config.ConfigException, FileNotFoundError) as exc:
                    raise RolloutError(f"kubeconfig: cannot load cluster credentials ({exc})") from exc
            custom_api = client.CustomObjectsApi()
        self._api = custom_api

    def _server(self) -> str:
        api_client = getattr(self._api, "api_client", None)
        return str(getattr(getattr(api_client, "configuration", None), "host", "?"))

    def _call(self, namespace: str, name: str, fn: Callable[[], Any]) -> dict[str, Any]:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(fn())
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise RolloutError(f"API server {self._server()}: unreachable ({reason})") from None
        except ApiException as exc:
            if exc.status in (401, 403):
                what = "not authenticated" if exc.status == 401 else "forbidden"
                raise RolloutError(
                    f"InferenceService {namespace}/{name}: API server {self._server()} answered "
                    f"{exc.status} ({what}): check the kubeconfig credentials and the account's RBAC"
                ) from None
            if exc.status == 404:
                raise NotFoundError(f"InferenceService {namespace}/{name}: not found") from None
            if exc.status == 409:
                raise UnsettledError(
                    f"InferenceService {namespace}/{name}: changed concurrently (409 conflict); re-run the step"
                ) from None
            raise RolloutError(
                f"InferenceService {namespace}/{name}: API error {exc.status}: {exc.reason}"
            ) from None

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        """GET the InferenceService."""
        return self._call(
            namespace,
            name,
            lambda: self._api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name),
        )

    def patch(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH with ``application/merge-patch+json`` (the client's default for custom objects)."""
        return self._call(
            namespace,
            name,
            lambda: self._api.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, dict(body)
            ),
        )


@dataclass
class Rollout:
    """Rollout steps against one InferenceService; every step refuses unless the last one settled."""

    api: IsvcApi
    namespace: str = "clinrisk"
    name: str = "clinrisk"
    poll_s: float = 5.0
    sleep: Callable[[float], None] = field(default=time.sleep)
    clock: Callable[[], float] = field(default=time.monotonic)

    def get(self) -> dict[str, Any]:
        """Current document."""
        return self.api.get(self.namespace, self.name)

    def status(self) -> RolloutState:
        """Current state."""
        return read_state(self.get())

    def _step(
        self, plan: Callable[[dict[str, Any]], dict[str, Any]], wait: bool, timeout_s: float
    ) -> RolloutState:
        body = plan(self.get())
        updated = self.api.patch(self.namespace, self.name, body)
        return (
            self.wait_settled(timeout_s, after_generation=updated.get("metadata", {}).get("generation"))
            if wait
            else read_state(updated)
        )

    def canary(
        self, model_uri: str | None, percent: int, *, wait: bool = True, timeout_s: float = 600
    ) -> RolloutState:
        """Start a canary of ``model_uri`` at ``percent`` %, or shift the running canary to ``percent``."""
        validate_percent(percent)
        return self._step(lambda isvc: plan_canary(isvc, model_uri, percent), wait, timeout_s)

    def promote(
        self,
        *,
        wait: bool = True,
        timeout_s: float = 600,
        gate: Callable[[RolloutState], list[str]] | None = None,
    ) -> RolloutState:
        """Send all traffic to the latest revision; with ``gate``, only if it reports no problems."""
        if gate is not None:
            state = self.status()
            problems = gate(state)
            if problems:
                raise RolloutError(
                    f"InferenceService {self.namespace}/{self.name}: promotion gate failed: "
                    + "; ".join(problems)
                )
        return self._step(plan_promote, wait, timeout_s)

    def rollback(self, *, wait: bool = True, timeout_s: float = 600) -> RolloutState:
        """Restore the previous model URI (and its traffic, at once, during a canary)."""
        return self._step(plan_rollback, wait, timeout_s)

    def wait_settled(self, timeout_s: float, after_generation: int | None = None) -> RolloutState:
        """Poll until the controller observed ``after_generation`` and the phase is settled."""
        deadline = self.clock() + timeout_s
        while True:
            state = self.status()
            caught_up = after_generation is None or (
                state.observed_generation is not None and state.observed_generation >= after_generation
            )
            if caught_up and state.settled:
                return state
            if self.clock() >= deadline:
                raise UnsettledError(f"timed out after {timeout_s:.0f}s waiting to settle: {state.summary()}")
            self.sleep(self.poll_s)
