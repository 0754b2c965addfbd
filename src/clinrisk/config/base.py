"""Base class for every config section: unknown keys are errors, values are validated on assignment."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A strict config section (typos in keys fail at load with the key's dotted path)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
