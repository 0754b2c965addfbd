"""Base class for every config section: unknown keys are errors, values are validated on assignment, and a
float must be finite (``.inf``/``.nan`` in YAML would otherwise pass every bound that is not set).

``SAFE_NAME`` is the pattern of a name used as a path segment (run name, registered model name): letters,
digits, ``_ . -``, not starting with a dot or dash, so ``.``, ``..`` and hidden names cannot leave their folder."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

SAFE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


class Section(BaseModel):
    """A strict config section (typos in keys fail at load with the key's dotted path)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)
