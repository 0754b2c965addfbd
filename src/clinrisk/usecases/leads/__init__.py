"""B2B SaaS lead conversion: which free-tier companies convert to paying within N days of a snapshot.

The plugin (``USECASE``) is assembled in :mod:`clinrisk.usecases.leads.plugin`; the pure parts are
``generator`` (synthetic export + weekly hazard truth), ``tables``/``schemas``/``ingest`` (the three CSV
files, their pandera contracts and quarantine), ``features`` (point-in-time features and labels), ``truth``,
``splits``, ``evaluate`` (lift/gains at top-k) and ``request`` (the V1 contract). See docs/usecases/leads.md.
"""

from __future__ import annotations

from clinrisk.usecases.base import UseCase, UseCaseNames
from clinrisk.usecases.leads.config import LeadsParams
from clinrisk.usecases.leads.plugin import LABELS, NAME, LeadsFeatures, LeadsSchema, LeadsServing, LeadsSource

USECASE = UseCase(
    names=UseCaseNames(usecase=NAME, namespace="leads", model_name="leads", experiment="leads"),
    description="Which free-tier companies convert to paying within N days of a snapshot (B2B SaaS).",
    source=LeadsSource(),
    schema=LeadsSchema(),
    features=LeadsFeatures(),
    labels=LABELS,
    serving=LeadsServing(),
    configs={"default": "configs/leads/default.yaml", "tiny": "configs/leads/tiny.yaml"},
    config_model=LeadsParams,
)

__all__ = ["USECASE"]
