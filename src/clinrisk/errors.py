"""Exceptions shared by every stage. Each names the field (column, key, file) and the problem.

:func:`describe_failure` is the one map from an exception to the CLI's ``error:`` line: a
:class:`ClinriskError` speaks for itself; bad paths, a corrupt tracking store and unreachable endpoints
raised by the standard library or a dependency are expected failures too, worded here once so that every
command says them the same way. Anything else is a bug (``None``: the CLI shows it as one and keeps the
traceback for ``--debug``).
"""

from __future__ import annotations

from collections.abc import Iterator


class ClinriskError(Exception):
    """Base class: a user-facing error with a clear message."""


class ConfigError(ClinriskError):
    """An invalid configuration file, key or value. The message names the key."""


class DataError(ClinriskError):
    """Missing, unreadable, corrupt or invalid data. The message names the file or column."""


class StageError(ClinriskError):
    """A pipeline stage failed; nothing was published."""


def _first_line(text: object, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return (lines[0] if lines else "").rstrip(":")[:limit]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last (cycle-safe)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _class_names(exc: BaseException) -> set[str]:
    """Fully qualified names of ``exc``'s classes: recognising a dependency's errors without importing it."""
    return {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}


def _os_reason(exc: OSError) -> str:
    reason = exc.strerror or _first_line(exc) or type(exc).__name__
    return reason[0].lower() + reason[1:] if reason else reason


def _network_endpoint(exc: BaseException) -> str | None:
    """The URL or host an HTTP client error was about, when the exception carries it."""
    request = getattr(exc, "request", None)
    url = getattr(request, "url", None)
    if isinstance(url, str) and url:
        return url.split("?", 1)[0]
    pool = getattr(exc, "pool", None)
    if pool is not None and getattr(pool, "host", None):
        path = getattr(exc, "url", "") or ""
        return f"{getattr(pool, 'scheme', 'http')}://{pool.host}:{pool.port}{path.split('?', 1)[0]}"
    return None


def _network_reason(exc: BaseException) -> str:
    """The root cause of a connection failure in a few words (``connection refused``, ``timed out``)."""
    for inner in reversed(list(_chain(exc))):
        reason = getattr(inner, "reason", None)
        for candidate in (inner, reason):
            if isinstance(candidate, OSError) and candidate.strerror:
                return _os_reason(candidate)
    text = _first_line(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host"):
        if marker in str(exc):
            return marker[0].lower() + marker[1:]
    return text or type(exc).__name__


NETWORK_ERRORS = {
    "requests.exceptions.RequestException",
    "urllib3.exceptions.HTTPError",
    "urllib.error.URLError",
    "http.client.HTTPException",
    "builtins.TimeoutError",
}
PARQUET_ERRORS = {"polars.exceptions.PolarsError", "pyarrow.lib.ArrowException"}
# Builtin exception types that mean a bug in clinrisk, even when raised while handling an expected failure.
BUG_TYPES = (LookupError, TypeError, AttributeError, AssertionError, NameError, ArithmeticError)
STORE_ERRORS = {"sqlalchemy.exc.SQLAlchemyError", "sqlite3.Error", "alembic.util.exc.CommandError"}


def describe_failure(exc: BaseException, store: str | None = None) -> str | None:
    """The one-line ``error:`` text for an expected failure, or ``None`` for a bug.

    ``store`` names the tracking store the command was using, for a corrupt or unreadable store (its
    driver's errors do not say which file they were about)."""
    if isinstance(exc, ClinriskError):
        return str(exc)
    if isinstance(exc, BUG_TYPES):
        return None
    for link in _chain(exc):
        names = _class_names(link)
        if names & STORE_ERRORS:
            where = f"MLflow store {store}" if store else "MLflow store"
            orig = getattr(link, "orig", None) or link
            return f"{where}: unreadable or corrupt ({_first_line(orig)})"
        if names & NETWORK_ERRORS or isinstance(link, ConnectionError):
            endpoint = _network_endpoint(link) or _network_endpoint(exc) or "the server"
            response = getattr(link, "response", None)
            if response is not None and getattr(response, "status_code", None) is not None:
                return f"{endpoint}: HTTP {response.status_code} {getattr(response, 'reason', '') or ''}".rstrip()
            return f"cannot reach {endpoint}: {_network_reason(link)}"
    names = _class_names(exc)
    if names & PARQUET_ERRORS and "parquet" in str(exc).lower():
        # a fallback: readers check files first (clinrisk.io.parquet_schema) and name them; this is damage
        # past a whole footer (a corrupt page), found only while decoding.
        return f"unreadable Parquet data ({_first_line(exc)})"
    if "mlflow.exceptions.MlflowException" in names:
        text = _first_line(getattr(exc, "message", exc))
        if store and store not in text:
            return f"MLflow store {store}: {text}"
        return f"MLflow: {text}"
    if isinstance(exc, OSError):
        if exc.filename is None:
            return _first_line(exc) or type(exc).__name__
        where = exc.filename
        also = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{where}{also}: {_os_reason(exc)}"
    return None
