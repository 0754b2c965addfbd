"""The select stage: feature selection under a memory budget (filters + stability selection with probes).

Core: :func:`clinrisk.selection.selection_document` (a features dataset's spec and shards in, the selection
document out; it reads bounded samples, writes nothing). ``run`` reads ``features``, writes ``selection``.
"""

from __future__ import annotations

from typing import Any

from clinrisk.config import ClinriskConfig
from clinrisk.selection import load_inputs, publish_selection, selection_document, summary_metrics
from clinrisk.stages.catalog import Catalog


def run(cfg: ClinriskConfig, io: Catalog) -> dict[str, Any]:
    """Select features of ``io["features"]`` into ``io["selection"]``; returns the selection document."""
    features = io.path("features")
    spec, shards = load_inputs(features)
    doc = selection_document(cfg, spec, shards, str(features))
    publish_selection(doc, io.path("selection"))
    io.log_numeric(summary_metrics(doc))
    return doc
