"""Parquet sink for served requests: model inputs + score + model version + timestamp, no identifiers.

De-identified mode (what the server writes, ``deidentify=True``): only what the drift job reads (model
features, probability, model version, time) survives, and of those the quasi-identifiers are removed or
coarsened: ``QUASI_IDENTIFIER_FEATURES`` (site, ethnicity, family history, free-text diagnosis code,
height) are not written, ``age`` is written as the midpoint of its 5-year band, and every other numeric
feature is rounded to ``SIGNIFICANT_DIGITS`` significant digits (drift bins are deciles: unaffected in
practice). Repeat requests for one patient are linked only by ``patient_key``: a keyed HMAC-SHA256 of
the patient's static attributes, with a secret the operator holds (without it the key cannot be
recomputed from the attributes, nor reversed). Retention: day folders older than ``retention_days`` are
deleted when the logger starts and at every flush.

Layout: ``<root>/date=YYYY-MM-DD/part-<utc>-<uuid>.parquet`` (zstd). Each part is written to a hidden
temporary file and renamed into place, so readers (the drift job) never see a half-written part and
concurrent loggers (several server workers) never collide. Memory is bounded: rows are buffered up to
``flush_rows`` and then written. Categorical features are stored as their level names (strings) so parts
written by different processes concatenate without Enum mismatches.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import polars as pl

from clinrisk.errors import DataError
from clinrisk.io import read_parquet

TIMESTAMP = "timestamp"
MODEL_VERSION = "model_version"
PROBABILITY = "probability"
REQUEST_ID = "request_id"
PATIENT_KEY = "patient_key"
# Features that single a patient out in a small population (never written in de-identified mode).
QUASI_IDENTIFIER_FEATURES = frozenset(
    {"site_id", "ethnicity", "family_history", "other_dx_code", "height_cm"}
)
AGE_BAND_YEARS = 5
SIGNIFICANT_DIGITS = 3
# Static attributes the patient key is computed from (in this order).
PATIENT_KEY_FIELDS = ("sex", "birth_year", "region", "site_id", "ethnicity", "entry_year")
META_COLUMNS = (TIMESTAMP, MODEL_VERSION, PROBABILITY)
# Identifiers and anything derived from outcomes never enter the log.
DENY_COLUMNS = frozenset(
    {"patient_id", "split", "label", "label_rec", "sample_weight", "birth_year", "entry_year", "year"}
)
DENY_PREFIXES = ("eval_", "truth_", "_")


def _allowed(name: str) -> bool:
    return (
        name not in DENY_COLUMNS
        and not name.startswith(DENY_PREFIXES)
        and name not in (*META_COLUMNS, REQUEST_ID, PATIENT_KEY)
    )


def patient_key(secret: bytes, static: dict[str, Any]) -> str:
    """Keyed pseudonym of a patient: HMAC-SHA256(secret, static attributes), 16 hex characters."""
    msg = "\x1f".join(f"{f}={static.get(f)}" for f in PATIENT_KEY_FIELDS).encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()[:16]


def deidentify_features(features: pl.DataFrame) -> pl.DataFrame:
    """Drop quasi-identifying features, band age, round numeric values (see module doc)."""
    keep = [c for c in features.columns if c not in QUASI_IDENTIFIER_FEATURES]
    exprs = []
    for c in keep:
        dt = features.schema[c]
        if c == "age":
            band = (pl.col(c).cast(pl.Float64) // AGE_BAND_YEARS) * AGE_BAND_YEARS + AGE_BAND_YEARS / 2
            exprs.append(band.alias(c))
        elif dt.is_float():
            exprs.append(pl.col(c).cast(pl.Float64).round_sig_figs(SIGNIFICANT_DIGITS).alias(c))
        else:
            exprs.append(pl.col(c))
    return features.select(exprs)


def enforce_retention(root: str | Path, retention_days: int, today: date | None = None) -> list[Path]:
    """Delete ``date=YYYY-MM-DD`` folders older than ``retention_days``; returns what was deleted."""
    r = Path(root)
    if not r.is_dir():
        return []
    cutoff = (today or datetime.now(UTC).date()) - timedelta(days=retention_days)
    deleted = []
    for folder in sorted(r.glob("date=*")):
        try:
            day = date.fromisoformat(folder.name.removeprefix("date="))
        except ValueError:
            continue
        if day < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
    return deleted


def sanitize_features(features: pl.DataFrame, feature_names: Sequence[str] | None = None) -> pl.DataFrame:
    """Keep model inputs only (``feature_names`` if given, else every non-identifier column);
    categoricals become strings. A requested feature that is missing is a DataError naming it."""
    if feature_names is not None:
        missing = [n for n in feature_names if n not in features.columns]
        if missing:
            raise DataError(f"request log: feature column(s) {missing} missing from the logged frame")
        cols = [n for n in feature_names if _allowed(n)]
    else:
        cols = [c for c in features.columns if _allowed(c)]
    exprs = []
    for c in cols:
        dt = features.schema[c]
        if isinstance(dt, pl.Enum | pl.Categorical):
            exprs.append(pl.col(c).cast(pl.String))
        elif dt == pl.Boolean:
            exprs.append(pl.col(c).cast(pl.Int8))
        else:
            exprs.append(pl.col(c))
    return features.select(exprs)


class RequestLogger:
    """Buffered, append-only, thread-safe request log. Use as a context manager or call :meth:`close`.

    ``log(features_df, probabilities, model_version)`` appends one row per scored instance.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        flush_rows: int = 5_000,
        feature_names: Sequence[str] | None = None,
        deidentify: bool = False,
        retention_days: int | None = None,
    ) -> None:
        if flush_rows < 1:
            raise DataError(f"request log: flush_rows must be >= 1, got {flush_rows}")
        self.root = Path(root)
        self.flush_rows = int(flush_rows)
        self.feature_names = list(feature_names) if feature_names is not None else None
        self._buffer: list[pl.DataFrame] = []
        self._buffered = 0
        self._lock = threading.Lock()
        self._closed = False
        self.parts_written: list[Path] = []
        self.rows_written = 0
        self.deidentify = deidentify
        self.retention_days = retention_days
        if retention_days is not None:
            enforce_retention(self.root, retention_days)

    def log(
        self,
        features: pl.DataFrame,
        probabilities: Any,
        model_version: str,
        timestamp: datetime | None = None,
        request_ids: Sequence[str] | None = None,
        patient_keys: Sequence[str] | None = None,
    ) -> None:
        """Buffer one batch (flushes when ``flush_rows`` is reached). Rows must align with probabilities.

        ``request_ids`` are opaque per-request tokens (never patient identifiers) that let outcomes known
        later be joined back for canary A/B analysis.
        """
        if self._closed:
            raise DataError("request log: logger is closed")
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if p.size != features.height:
            raise DataError(f"request log: {features.height} feature rows but {p.size} probabilities")
        if not model_version:
            raise DataError("request log: model_version is empty")
        ts = timestamp or datetime.now(UTC)
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        body = sanitize_features(features, self.feature_names)
        if self.deidentify:
            body = deidentify_features(body)
        meta: dict[str, pl.Series] = {
            TIMESTAMP: pl.Series([ts] * p.size, dtype=pl.Datetime("us", "UTC")),
            MODEL_VERSION: pl.Series([str(model_version)] * p.size, dtype=pl.String),
            PROBABILITY: pl.Series(p, dtype=pl.Float64),
        }
        if request_ids is not None:
            ids = [str(r) for r in request_ids]
            if len(ids) != p.size:
                raise DataError(f"request log: {len(ids)} request_ids for {p.size} rows")
            meta[REQUEST_ID] = pl.Series(ids, dtype=pl.String)
        if patient_keys is not None:
            keys = [str(k) for k in patient_keys]
            if len(keys) != p.size:
                raise DataError(f"request log: {len(keys)} patient_keys for {p.size} rows")
            meta[PATIENT_KEY] = pl.Series(keys, dtype=pl.String)
        batch = pl.concat([pl.DataFrame(meta), body], how="horizontal")
        with self._lock:
            self._buffer.append(batch)
            self._buffered += batch.height
            if self._buffered >= self.flush_rows:
                self._flush_locked()

    def flush(self) -> Path | None:
        """Write buffered rows as one Parquet part; returns its path (None when nothing was buffered)."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> Path | None:
        if not self._buffer:
            return None
        df = pl.concat(self._buffer, how="diagonal_relaxed")
        self._buffer, self._buffered = [], 0
        now = datetime.now(UTC)
        day = df[TIMESTAMP].min()
        day_s = day.strftime("%Y-%m-%d") if isinstance(day, datetime) else now.strftime("%Y-%m-%d")
        folder = self.root / f"date={day_s}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{name}.tmp"
        try:
            df.write_parquet(tmp, compression="zstd")
            os.replace(tmp, folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.parts_written.append(folder / name)
        self.rows_written += df.height
        if self.retention_days is not None:
            enforce_retention(self.root, self.retention_days)
        return folder / name

    def close(self) -> None:
        """Flush what is buffered; further :meth:`log` calls fail."""
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> RequestLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def list_parts(root: str | Path) -> list[Path]:
    """Published parts under ``root`` (hidden temporary files excluded), in name order."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{r}: request log directory not found")
    return sorted(p for p in r.glob("date=*/part-*.parquet") if not p.name.startswith("."))


def read_request_log(
    root: str | Path,
    *,
    model_version: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """All logged rows (optionally of one model version, in ``[since, until)``), oldest first."""
    parts = list_parts(root)
    if not parts:
        raise DataError(f"{root}: request log holds no parts")
    frames = [read_parquet(p) for p in parts]  # a corrupt part is a DataError naming it
    df = pl.concat(frames, how="diagonal_relaxed")
    for col in META_COLUMNS:
        if col not in df.columns:
            raise DataError(f"{root}: request log lacks column {col}")
    if model_version is not None:
        df = df.filter(pl.col(MODEL_VERSION) == model_version)
    if since is not None:
        df = df.filter(pl.col(TIMESTAMP) >= (since if since.tzinfo else since.replace(tzinfo=UTC)))
    if until is not None:
        df = df.filter(pl.col(TIMESTAMP) < (until if until.tzinfo else until.replace(tzinfo=UTC)))
    return df.sort(TIMESTAMP, maintain_order=True)
