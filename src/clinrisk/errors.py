"""Exceptions shared by every stage. Each names the field (column, key, file) and the problem."""

from __future__ import annotations


class ClinriskError(Exception):
    """Base class: a user-facing error with a clear message."""


class ConfigError(ClinriskError):
    """An invalid configuration file, key or value. The message names the key."""


class DataError(ClinriskError):
    """Missing, unreadable, corrupt or invalid data. The message names the file or column."""


class StageError(ClinriskError):
    """A pipeline stage failed; nothing was published."""
