"""The deploy stage: a canary of a registered model on the use case's KServe InferenceService.

Core: :class:`clinrisk.rollout.Rollout` (the canary state machine over the InferenceService; pure planning in
``plan_canary``). ``run`` resolves the model first: a registry URI (``models:/name/version`` or
``models:/name@alias``, what register returns) becomes its bundle's storage URI, since KServe's storage
initializer cannot read ``models:/``; any other URI is passed as given (and one KServe cannot fetch, e.g. a
local path, is refused before any patch). The CLI (``clinrisk rollout canary``) and the KFP step
(``deploy-canary``) both call it. No catalog path is read or written: the InferenceService is the output.
"""

from __future__ import annotations

from typing import Any

from clinrisk.config import ClinriskConfig
from clinrisk.stages.catalog import Catalog


def run(
    cfg: ClinriskConfig,
    io: Catalog,
    model_uri: str | None,
    percent: int,
    *,
    api: Any = None,
    namespace: str | None = None,
    name: str | None = None,
    wait: bool = True,
    timeout_s: float = 600,
) -> Any:
    """Canary ``model_uri`` (None: shift the running canary) at ``percent`` % on the InferenceService
    ``namespace/name`` (default: the config's ``serving.namespace`` / ``serving.model_name``); returns the
    rollout state. ``api`` is the Kubernetes access (default: the current kubeconfig)."""
    from clinrisk.rollout import KubernetesIsvcApi, Rollout, validate_percent
    from clinrisk.tracking import resolve_storage_uri

    validate_percent(percent)  # fail before touching the registry or the cluster
    storage_uri = resolve_storage_uri(cfg, model_uri, io.get("run_root")) if model_uri else None
    rollout = Rollout(
        api if api is not None else KubernetesIsvcApi(),
        namespace=namespace or cfg.serving.namespace,
        name=name or cfg.serving.model_name,
    )
    return rollout.canary(storage_uri, percent, wait=wait, timeout_s=timeout_s)
