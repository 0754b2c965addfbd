"""`clinrisk` commands for this area; each is a thin wrapper over library functions."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
