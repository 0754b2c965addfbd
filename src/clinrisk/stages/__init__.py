"""The pipeline's stages, one module each, under one contract: a pure core plus ``run(cfg, io)``.

``io`` is a :class:`clinrisk.stages.catalog.Catalog` (logical artefact names -> paths, plus the run's metric
and tracking sinks). The CLI stage commands and the KFP steps (``clinrisk.steps``) both build a catalog and
call the same ``run``; neither orchestrates a stage itself.
"""

from clinrisk.stages.catalog import Catalog

__all__ = ["Catalog"]
