"""Raw-data validation settings."""

from __future__ import annotations

from pydantic import Field

from clinrisk.config.base import Section


class ValidateConfig(Section):
    """Raw validation: how much quarantine is tolerated before the stage fails."""

    max_quarantine_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="fail the stage if more than this share of rows is quarantined"
    )
