"""Train the LightGBM risk model from feature shards, calibrate, pick τ, and write the model bundle.

Out-of-core (docs/science.md §5.2 step 6): the training Dataset is built from one :class:`ShardSequence` per
shard (``lgb.Sequence``) that reads Parquet row groups on demand — only the model's feature columns, and
only training-split rows with ``sample_weight > 0`` — so no full in-memory copy of the feature matrix
exists; LightGBM keeps only its binned representation (``free_raw_data=True``). Labels and weights (two
float vectors) are the only per-row arrays held. The validation split is cut by patient into two disjoint
parts: one for early stopping, the other for choosing and fitting the calibration map and checking the
threshold; test rows are never read.

Imbalance (docs/science.md §4.1): unweighted log-loss by default. ``train.positive_class_weight = w > 1``
multiplies the positive part of each row's loss by w — for a soft label y that is exactly the row
(label ``wy/(wy + 1 − y)``, weight ``wy + 1 − y``) — and the bundle subtracts log w from the logit
(odds ÷ w) before calibration, threshold, evaluation and serving.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import polars as pl

from clinrisk.bundle import (
    SPEC_FILE,
    features_to_matrix,
    odds_correct_logit,
    write_bundle,
)
from clinrisk.calibration import VALIDATION_PART_SALT  # the early-stopping / calibration cut's salt
from clinrisk.errors import DataError
from clinrisk.feature_table import check_feature_names

if TYPE_CHECKING:
    import lightgbm as lgb

    from clinrisk.config import ClinriskConfig
    from clinrisk.feature_table import FeatureSpec

log = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
TRAIN, VALIDATION = "train", "validation"
# The validation split is cut into two disjoint, patient-grouped parts: VALIDATION rows drive early
# stopping; CALIBRATION rows (the other patients) fit and choose the calibration map and check τ, so the
# map is never fitted on the rows that picked the number of trees.
CALIBRATION = "calibration"
# Seed stream of the training-row budget's draw (kept apart from the other draws seeded by run.seed).
TRAIN_SAMPLE_STREAM = 0x7261
# Rows drawn from the training split for the reference quantiles (OOD checks, PSI drift).
REFERENCE_SAMPLE_ROWS = 100_000
REFERENCE_QUANTILES = tuple(round(q, 2) for q in np.linspace(0.1, 0.9, 9))


# ---------------------------------------------------------------------------------- out-of-core reading


_SEQUENCE_TOKENS = itertools.count()  # tells sequences apart in a shared cache (ids can be reused)


@dataclass
class DecodedRowGroup:
    """The one decoded row group that a split's ShardSequences share.

    LightGBM reads the sequences of a Dataset one after another (bin sample in increasing row order, then
    batches), and prediction and statistics walk them in order too, so one slot per split is enough. A cache
    per sequence would keep every shard's last row group alive: feature shards are written as one row group,
    so that is the whole selected feature matrix again, growing with the number of shards.
    """

    key: tuple[int, int] | None = None  # (sequence token, row group)
    X: F32Array | None = None


@dataclass
class ShardSequence:
    """``lgb.Sequence``-compatible view of the selected rows of one shard, read row group by row group.

    LightGBM samples rows with increasing indices and then reads contiguous batches, so a one-row-group
    cache (``cache``, shared by the split's sequences) means every row group is decoded about twice in all.
    """

    path: Path
    feature_names: list[str]
    categories: dict[str, list[str]]
    rg_rows: list[npt.NDArray[np.int32]]  # selected local row indices per row group (may be empty)
    batch_size: int = 4096
    cache: DecodedRowGroup = field(default_factory=DecodedRowGroup, repr=False)
    _offsets: list[int] = field(default_factory=list, init=False)
    _token: int = field(default_factory=lambda: next(_SEQUENCE_TOKENS), init=False, repr=False)

    def __post_init__(self) -> None:
        self._offsets = [0]
        for rows in self.rg_rows:
            self._offsets.append(self._offsets[-1] + len(rows))

    def __len__(self) -> int:
        return self._offsets[-1]

    def _group(self, rg: int) -> F32Array:
        key = (self._token, rg)
        if self.cache.key == key and self.cache.X is not None:
            return self.cache.X
        import pyarrow.parquet as pq

        self.cache.key, self.cache.X = None, None  # free the previous group before decoding the next
        table = pq.ParquetFile(self.path).read_row_group(rg, columns=self.feature_names)
        df = pl.from_arrow(table)
        assert isinstance(df, pl.DataFrame)
        del table
        # Select the rows before encoding: the encoded matrix then exists only for them (rows encode
        # independently, so the values are the same as selecting after).
        X = features_to_matrix(df[self.rg_rows[rg]], self.feature_names, self.categories)
        del df
        self.cache.key, self.cache.X = key, X
        return X

    def _locate(self, i: int) -> tuple[int, int]:
        rg = bisect.bisect_right(self._offsets, i) - 1
        return rg, i - self._offsets[rg]

    def __getitem__(self, idx: int | slice) -> npt.NDArray[np.floating[Any]]:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                raise IndexError("ShardSequence: only contiguous slices are supported")
            parts = []
            i = start
            while i < stop:
                rg, local = self._locate(i)
                take = min(stop - i, self._offsets[rg + 1] - i)
                parts.append(self._group(rg)[local : local + take])
                i += take
            if not parts:
                return np.zeros((0, len(self.feature_names)), dtype=np.float32)
            return np.ascontiguousarray(np.concatenate(parts))
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(idx)
        rg, local = self._locate(idx)
        # Single rows feed LightGBM's bin sampling, which requires float64 (exact for float32 values).
        return self._group(rg)[local].astype(np.float64)

    def take(self, indices: npt.NDArray[np.int64]) -> F32Array:
        """Rows at sorted ``indices`` (vectorised per row group)."""
        out = []
        bounds = np.asarray(self._offsets)
        groups = np.searchsorted(bounds, indices, side="right") - 1
        for rg in np.unique(groups):
            sel = indices[groups == rg] - bounds[rg]
            out.append(self._group(int(rg))[sel])
        if not out:
            return np.zeros((0, len(self.feature_names)), dtype=np.float32)
        return np.concatenate(out)

    def matrices(self) -> Any:
        """Yield the selected rows of each row group in order (for streaming prediction)."""
        for rg, rows in enumerate(self.rg_rows):
            if len(rows):
                yield self._group(rg)


def _as_lgb_sequence(seq: ShardSequence) -> Any:
    """Register ShardSequence as a virtual ``lgb.Sequence`` subclass (lightgbm imported lazily)."""
    import lightgbm as lgb

    lgb.Sequence.register(ShardSequence)
    return seq


@dataclass
class SplitRows:
    """Per-split labels and weights gathered in one cheap pass over the id columns.

    Memory per selected row is what training needs and no more: a float32 label and weight and an int32
    row index (in the ShardSequence). Recorded labels and patient ids are kept only for the two validation
    parts (``keep_ids``), where calibration and its patient-grouped choice need them; the training split,
    the largest by far, carries neither.
    """

    keep_ids: bool = True
    drawn_from: int | None = None  # the rows a training-row budget drew these from (None: not sampled)
    sequences: list[ShardSequence] = field(default_factory=list)
    label: list[F32Array] = field(default_factory=list)
    weight: list[F32Array] = field(default_factory=list)
    label_rec: list[F32Array] = field(default_factory=list)
    patient_id: list[npt.NDArray[np.int64]] = field(default_factory=list)

    def finish(self) -> None:
        """Concatenate the per-row-group parts into one array each (the parts are then freed)."""
        for name in ("label", "weight", "label_rec", "patient_id"):
            parts = getattr(self, name)
            if len(parts) > 1:
                setattr(self, name, [np.concatenate(parts)])

    def patient_ids(self) -> npt.NDArray[np.int64]:
        """Patient id per row (groups for the held-out calibration choice); empty if not kept."""
        return np.concatenate(self.patient_id) if self.patient_id else np.zeros(0, dtype=np.int64)

    def labels_weights(self) -> tuple[F32Array, F32Array]:
        """(label, weight) as float32, no copy after :meth:`finish`."""

        def cat(parts: list[F32Array]) -> F32Array:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

        return cat(self.label), cat(self.weight)

    def arrays(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(label, weight, recorded label) as float64 (the validation parts; label_rec needs ``keep_ids``)."""

        def cat(parts: list[F32Array]) -> FloatArray:
            return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)

        return cat(self.label), cat(self.weight), cat(self.label_rec)

    @property
    def n(self) -> int:
        return sum(len(s) for s in self.sequences)


def budget_draw(n: int, max_rows: int, seed: int) -> npt.NDArray[np.int64]:
    """The sorted positions (among ``n`` training rows in file order) that a budget of ``max_rows`` keeps: a
    uniform random subset of ``min(max_rows, n)`` positions, seeded.

    Memory is O(``max_rows``) whatever ``n`` (numpy's ``choice`` without replacement allocates all ``n``
    positions once ``max_rows > n / 20``): i.i.d. draws with repeats discarded until the subset is complete
    (a uniform subset, by symmetry); above half of ``n`` the rows left out are drawn instead, so each draw
    is new with probability at least one half.
    """
    rng = np.random.default_rng([seed, TRAIN_SAMPLE_STREAM])
    k = min(max_rows, n)
    left_out = k > n // 2
    m = n - k if left_out else k
    picked = np.zeros(0, dtype=np.int64)
    while picked.size < m:
        picked = np.union1d(picked, rng.integers(0, n, m - picked.size, dtype=np.int64))
    if left_out:  # n < 2k here, so this array is within twice the budget
        return np.setdiff1d(np.arange(n, dtype=np.int64), picked, assume_unique=True)
    return picked


def _count_training_rows(shards: list[Path]) -> int:
    """Training-split rows with ``sample_weight > 0`` (two columns read; the budget's first pass)."""
    import pyarrow.parquet as pq

    n = 0
    for f in shards:
        pf = pq.ParquetFile(f)
        if not {"split", "sample_weight"} <= set(pf.schema_arrow.names):
            continue  # the full pass below names the missing column
        for rg in range(pf.num_row_groups):
            df = pl.from_arrow(pf.read_row_group(rg, columns=["split", "sample_weight"]))
            assert isinstance(df, pl.DataFrame)
            in_train = (pl.col("split").cast(pl.String) == TRAIN) & (
                pl.col("sample_weight").cast(pl.Float32) > 0
            )
            n += df.filter(in_train).height
    return n


def scan_splits(
    shards: list[Path],
    feature_names: list[str],
    categories: dict[str, list[str]],
    *,
    max_train_rows: int | None = None,
    seed: int = 0,
) -> dict[str, SplitRows]:
    """Index the train/validation rows (split + weight > 0) of every shard without reading features.

    With ``max_train_rows`` below the training rows, the training split holds only the budget's rows
    (:func:`budget_draw`; the same rows as :meth:`SplitRows.subsample` of the whole split): a first pass
    counts the training rows, so the per-row bookkeeping never exists for the rows left out and the
    step's memory does not grow with the data."""
    import pyarrow.parquet as pq

    from clinrisk.calibration import patient_fold

    names = (TRAIN, VALIDATION, CALIBRATION)
    out = {n: SplitRows(keep_ids=n != TRAIN) for n in names}
    slots = {n: DecodedRowGroup() for n in names}
    need = ["split", "label", "sample_weight"]
    keep: npt.NDArray[np.int64] | None = None
    if max_train_rows is not None:
        available = _count_training_rows(shards)
        if available > max_train_rows:
            keep = budget_draw(available, max_train_rows, seed)
    seen = 0  # training rows passed so far (positions in the budget's draw)
    for f in shards:
        pf = pq.ParquetFile(f)
        have = set(pf.schema_arrow.names)
        missing = [c for c in [*need, *feature_names] if c not in have]
        if missing:
            raise DataError(f"{f}: missing column(s) {missing[:10]}")
        has_rec = "label_rec" in have
        if "patient_id" not in have:
            raise DataError(f"{f}: missing column patient_id (needed to cut validation by patient)")
        per_split: dict[str, list[npt.NDArray[np.int32]]] = {n: [] for n in names}
        for rg in range(pf.num_row_groups):
            cols = [*need, "patient_id", *(["label_rec"] if has_rec else [])]
            df = pl.from_arrow(pf.read_row_group(rg, columns=cols))
            assert isinstance(df, pl.DataFrame)
            split = df["split"].cast(pl.String).to_numpy()
            lab = df["label"].cast(pl.Float32).to_numpy()
            wt = df["sample_weight"].cast(pl.Float32).to_numpy()
            rec = df["label_rec"].cast(pl.Float32).to_numpy() if has_rec else lab
            pid = df["patient_id"].cast(pl.Int64).to_numpy()
            part = patient_fold(pid, 2, salt=VALIDATION_PART_SALT)
            for name in names:
                in_split = split == (TRAIN if name == TRAIN else VALIDATION)
                if name != TRAIN:
                    in_split = in_split & (part == (0 if name == VALIDATION else 1))
                if np.any(in_split & ~np.isfinite(wt)):
                    raise DataError(f"{f}: column sample_weight has null/NaN values in {name} rows")
                rows = np.flatnonzero(in_split & (wt > 0)).astype(np.int32)  # row-group local
                y = lab[rows]
                if not np.all(np.isfinite(y)) or np.any((y < 0) | (y > 1)):
                    raise DataError(f"{f}: column label has null/NaN or values outside [0, 1] in {name} rows")
                if name == TRAIN and keep is not None:
                    start, seen = seen, seen + len(rows)
                    lo, hi = np.searchsorted(keep, [start, seen])
                    rows = rows[keep[lo:hi] - start]
                    y = lab[rows]
                per_split[name].append(rows)
                if len(rows) == 0:
                    continue
                out[name].label.append(y)
                out[name].weight.append(wt[rows])
                if out[name].keep_ids:
                    out[name].label_rec.append(np.nan_to_num(rec[rows], nan=0.0))
                    out[name].patient_id.append(pid[rows])
        for name in names:
            if any(len(r) for r in per_split[name]):
                out[name].sequences.append(
                    ShardSequence(Path(f), feature_names, categories, per_split[name], cache=slots[name])
                )
    if keep is not None:
        if seen != available:
            raise DataError(f"training rows changed while being read ({available} counted, {seen} read)")
        out[TRAIN].drawn_from = available
    for split_rows in out.values():
        split_rows.finish()
    return out


# -------------------------------------------------------------------------------------------- training


def class_weighted(
    y: FloatArray, w: FloatArray, positive_class_weight: float
) -> tuple[FloatArray, FloatArray]:
    """(label, weight) whose log-loss equals w_row·[c·y·log p + (1 − y)·log(1 − p)] (c = class weight)."""
    c = positive_class_weight
    if c == 1.0:
        return y, w
    mass = c * y + (1 - y)
    return c * y / mass, w * mass


def lgb_label_weight(y: F32Array, w: F32Array, positive_class_weight: float) -> tuple[F32Array, F32Array]:
    """:func:`class_weighted` for float32 rows, computed in float64 and rounded to float32 as LightGBM would
    (it stores labels and weights as float32); no copy at class weight 1."""
    if positive_class_weight == 1.0:
        return y, w
    ly, lw = class_weighted(y.astype(np.float64), w.astype(np.float64), positive_class_weight)
    return ly.astype(np.float32), lw.astype(np.float32)


def is_soft(y: npt.NDArray[np.floating[Any]]) -> bool:
    """True if any label is strictly between 0 and 1 (E2 expected labels)."""
    return bool(np.any((y > 0) & (y < 1)))


def lgb_params(cfg: ClinriskConfig, objective: str) -> dict[str, Any]:
    """LightGBM parameters: deterministic (seeded, deterministic, col-wise), all cores by default."""
    t = cfg.train
    return {
        "objective": objective,
        "metric": ["cross_entropy" if objective == "cross_entropy" else "binary_logloss"],
        "learning_rate": t.learning_rate,
        "num_leaves": t.num_leaves,
        "min_data_in_leaf": t.min_data_in_leaf,
        "feature_fraction": t.feature_fraction,
        "bagging_fraction": t.bagging_fraction,
        "bagging_freq": t.bagging_freq,
        "lambda_l2": t.lambda_l2,
        "max_bin": t.max_bin,
        "num_threads": t.num_threads or (os.cpu_count() or 1),
        "seed": cfg.run.seed % (2**31 - 1),
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
        "first_metric_only": True,
    }


def _predict_raw(booster: lgb.Booster, seqs: list[ShardSequence]) -> FloatArray:
    parts = [np.asarray(booster.predict(X, raw_score=True)) for s in seqs for X in s.matrices()]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def resolve_features(
    spec_names: list[str], selected: list[str] | None, forbidden: Sequence[str] = ()
) -> list[str]:
    """Model features: ``selected`` (validated against the spec, kept in spec order) or the whole spec;
    ``forbidden`` is the use case's list of raw columns that may never be features (``spec.forbidden``)."""
    if selected is None:
        names = list(spec_names)
    else:
        unknown = [n for n in selected if n not in spec_names]
        if unknown:
            raise DataError(f"selected features: {unknown} are not in the feature spec")
        chosen = set(selected)
        names = [n for n in spec_names if n in chosen]
    check_feature_names(names, forbidden)
    return names


# ------------------------------------------------------------------------------- metrics and reference


def validation_metrics(y: FloatArray, p: FloatArray) -> dict[str, float]:
    """AP, AUC (expected AUC for soft labels), Brier, log loss, O/E, calibration slope/intercept, n."""
    from clinrisk import metrics as m

    out: dict[str, float] = {
        "n": float(y.size),
        "n_pos": float(y.sum()),
        "prevalence": float(y.mean()),
        "mean_predicted": float(p.mean()),
        "brier": m.brier(y, p),
        "log_loss": m.log_loss(y, p),
        "oe": float(y.sum() / p.sum()),
    }
    if 0 < y.sum() < y.size:
        out["ap"] = m.average_precision(y, p)
        out["auc"] = m.roc_auc(y, p)
        out["scaled_brier"] = m.scaled_brier(y, p)
        slope = m.calibration_slope(y, p)
        out["cal_intercept"] = slope["intercept"]
        out["cal_slope"] = slope["slope"]
    return out


def _edges_shares(x: FloatArray, quantiles: tuple[float, ...]) -> dict[str, Any]:
    """Quantile bin edges and the share of rows per bin (bins: (-inf, e1), [e1, e2), ..., [ek, inf))."""
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return {"edges": [], "shares": [], "missing_share": 1.0}
    edges = np.unique(np.quantile(finite, quantiles))
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1)
    return {
        "edges": [float(e) for e in edges],
        "shares": [float(c) for c in counts / finite.size],
        "missing_share": float(1 - finite.size / x.size),
    }


def _moments(seqs: list[ShardSequence], p: int) -> dict[str, list[float | None]]:
    """Exact per-column mean/std/min/max/null share over all selected rows, one row group at a time.

    Blocks are merged with Chan's update in a fixed order, so the numbers are bit-for-bit reproducible.
    """
    n = np.zeros(p)
    mean = np.zeros(p)
    m2 = np.zeros(p)
    lo = np.full(p, np.inf)
    hi = np.full(p, -np.inf)
    rows = 0
    for s in seqs:
        for X in s.matrices():
            rows += X.shape[0]
            Xd = X.astype(np.float64)
            ok = np.isfinite(Xd)
            nb = ok.sum(axis=0).astype(np.float64)
            Xz = np.where(ok, Xd, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mb = np.where(nb > 0, Xz.sum(axis=0) / np.maximum(nb, 1), 0.0)
                m2b = (np.where(ok, Xd - mb, 0.0) ** 2).sum(axis=0)
            tot = n + nb
            delta = mb - mean
            safe = np.maximum(tot, 1)
            mean = mean + delta * nb / safe
            m2 = m2 + m2b + delta**2 * n * nb / safe
            n = tot
            lo = np.minimum(lo, np.where(ok, Xd, np.inf).min(axis=0))
            hi = np.maximum(hi, np.where(ok, Xd, -np.inf).max(axis=0))

    def opt(v: FloatArray, valid: npt.NDArray[np.bool_]) -> list[float | None]:
        return [float(x) if ok else None for x, ok in zip(v, valid, strict=True)]

    has = n > 0
    return {
        "mean": opt(mean, has),
        "std": opt(np.sqrt(m2 / np.maximum(n - 1, 1)), n > 1),
        "min": opt(lo, has),
        "max": opt(hi, has),
        "null_share": opt(1 - n / max(rows, 1), np.full(p, rows > 0)),
    }


def reference_stats(
    train: SplitRows,
    feature_names: list[str],
    categories: dict[str, list[str]],
    val_scores: FloatArray,
    seed: int,
) -> dict[str, Any]:
    """Per-feature training statistics (exact mean/std/min/max; quantile bins on a row sample) and the
    validation score distribution — the reference for serving's OOD checks and for PSI drift."""
    exact = _moments(train.sequences, len(feature_names))
    n_rows = train.n
    rng = np.random.default_rng(seed)
    sample_n = min(REFERENCE_SAMPLE_ROWS, n_rows)
    idx = np.sort(rng.choice(n_rows, size=sample_n, replace=False)) if n_rows else np.zeros(0, np.int64)
    blocks, off = [], 0
    for s in train.sequences:
        sel = idx[(idx >= off) & (idx < off + len(s))] - off
        if sel.size:
            blocks.append(s.take(sel.astype(np.int64)))
        off += len(s)
    X = np.concatenate(blocks) if blocks else np.zeros((0, len(feature_names)), np.float32)
    feats: dict[str, Any] = {}
    for j, n in enumerate(feature_names):
        col = X[:, j].astype(np.float64)
        if n in categories:
            levels = categories[n]
            codes = col[np.isfinite(col)].astype(np.int64)
            counts = np.bincount(codes, minlength=len(levels))[: len(levels)]
            feats[n] = {
                "type": "categorical",
                "levels": levels,
                "shares": [float(c) for c in counts / max(codes.size, 1)],
                "missing_share": float(1 - codes.size / max(col.size, 1)),
            }
        else:
            feats[n] = {
                "type": "numeric",
                **{k: v[j] for k, v in exact.items()},
                **_edges_shares(col, REFERENCE_QUANTILES),
            }
    score = {
        "split": VALIDATION,
        "n": int(val_scores.size),
        "mean": float(val_scores.mean()) if val_scores.size else None,
        **_edges_shares(val_scores, REFERENCE_QUANTILES),
    }
    return {
        "n_train_rows": n_rows,
        "sample_rows": int(sample_n),
        "quantiles": list(REFERENCE_QUANTILES),
        "features": feats,
        "score": score,
    }


def data_hash(features_dir: Path, shards: list[Path], raw_manifest: Path | None = None) -> dict[str, str]:
    """Provenance hashes: the features manifest/raw manifest if present, and sha256 of the shards used.
    ``raw_manifest`` is the raw dataset's manifest.json (the stage catalog's ``raw_manifest``; without it,
    the run folder's ``raw/`` beside the features)."""
    from clinrisk.io import read_json, sha256_file

    out: dict[str, str] = {}
    for key, path in (
        ("features", features_dir / "manifest.json"),
        ("raw", raw_manifest if raw_manifest is not None else features_dir.parent / "raw" / "manifest.json"),
    ):
        if path.is_file():
            m = read_json(path)
            h = m.get("content_hash") or m.get("data_hash") if isinstance(m, dict) else None
            if h:
                out[f"{key}_manifest_hash"] = str(h)
    h = hashlib.sha256()
    for f in [features_dir / SPEC_FILE, *shards]:
        h.update(f.relative_to(features_dir).as_posix().encode())
        h.update(sha256_file(f).encode())
    out["features_hash"] = h.hexdigest()
    return out


def sequence_dataset(
    rows: SplitRows,
    label: npt.NDArray[np.floating[Any]],
    weight: npt.NDArray[np.floating[Any]],
    feature_names: list[str],
    categorical: list[str],
    *,
    params: dict[str, Any] | None = None,
    reference: lgb.Dataset | None = None,
) -> lgb.Dataset:
    """The ``lgb.Dataset`` of one split's rows, streamed from its shards: one ``lgb.Sequence`` per shard.

    LightGBM draws its bin-construction sample (``bin_construct_sample_cnt`` rows, the same indices as for
    an in-memory matrix of the same rows) and then pushes the rows in ``ShardSequence.batch_size`` batches,
    binning as it goes; with ``free_raw_data`` only the binned store (about one byte per row and feature)
    remains. ``reference`` bins a validation set with the training set's bin edges.
    """
    import lightgbm as lgb

    return lgb.Dataset(
        [_as_lgb_sequence(s) for s in rows.sequences],
        label=label,
        weight=weight,
        reference=reference,
        feature_name=feature_names,
        categorical_feature=categorical,
        params=params,
        free_raw_data=True,
    )


def _fit_local(
    cfg: ClinriskConfig,
    params: dict[str, Any],
    train: SplitRows,
    stop: SplitRows,
    train_yw: tuple[F32Array, F32Array],
    stop_yw: tuple[FloatArray, FloatArray],
    feature_names: list[str],
    categorical: list[str],
) -> tuple[str, int, lgb.Booster]:
    """One process, out-of-core: lgb.Sequence per shard, early stopping on the early-stopping part."""
    import lightgbm as lgb

    train_ds = sequence_dataset(train, *train_yw, feature_names, categorical, params=params)
    val_ds = sequence_dataset(stop, *stop_yw, feature_names, categorical, reference=train_ds)
    booster = lgb.train(
        params,
        train_ds,
        num_boost_round=cfg.train.num_boost_round,
        valid_sets=[val_ds],
        valid_names=[VALIDATION],
        callbacks=[
            lgb.early_stopping(cfg.train.early_stopping_rounds, first_metric_only=True, verbose=False)
        ],
    )
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    model_text = booster.model_to_string(num_iteration=best)
    final = lgb.Booster(model_str=model_text)  # exactly what the bundle will reload
    del booster, train_ds, val_ds
    return model_text, int(best), final


def _fit_dask(
    cfg: ClinriskConfig,
    params: dict[str, Any],
    train: SplitRows,
    stop: SplitRows,
    train_yw: tuple[F32Array, F32Array],
    stop_yw: tuple[FloatArray, FloatArray],
    feature_names: list[str],
    categorical: list[str],
) -> tuple[str, int]:
    """``lightgbm.dask`` on a local dask.distributed cluster; early stopping replayed in the driver."""
    from clinrisk.train_dask import best_iteration, fit_dask

    booster = fit_dask(
        params,
        train.sequences,
        train_yw[0],
        train_yw[1],
        feature_names,
        categorical,
        cfg.train.num_boost_round,
        cfg.train.dask_workers,
        cfg.train.dask,
    )
    best = best_iteration(booster, stop.sequences, stop_yw[0], stop_yw[1], cfg.train.early_stopping_rounds)
    return booster.model_to_string(num_iteration=best), best


# ------------------------------------------------------------------------------------------------- main


def train_model(
    cfg: ClinriskConfig,
    features_dir: Path,
    out_dir: Path,
    selected_features: list[str] | None = None,
) -> dict[str, Any]:
    """Train, calibrate on validation, choose τ, and publish the bundle atomically at ``out_dir``.

    Returns ``{"metadata": ..., "metrics": ..., "threshold": ...}`` (what tracking logs). (The pipeline stage
    is :func:`clinrisk.stages.train.run`; this is the same for callers holding two paths.)
    """
    spec, shards, provenance = load_training_inputs(Path(features_dir))
    parts = fit_bundle(cfg, spec, shards, provenance, selected_features, where=str(features_dir))
    return publish_bundle(cfg, parts, Path(out_dir))


def load_training_inputs(
    features_dir: Path, raw_manifest: Path | None = None
) -> tuple[FeatureSpec, list[Path], dict[str, str]]:
    """The frozen spec, the checked shard files (whole Parquet, typed as the spec says, else DataError) and
    the provenance hashes of a features dataset (:func:`data_hash`)."""
    from clinrisk.feature_table import FeatureSpec
    from clinrisk.io import check_feature_shards

    spec = FeatureSpec.from_json(features_dir / SPEC_FILE)
    shards = check_feature_shards(features_dir)
    return spec, shards, data_hash(features_dir, shards, raw_manifest)


def fit_bundle(
    cfg: ClinriskConfig,
    spec: FeatureSpec,
    shards: list[Path],
    provenance: dict[str, str],
    selected_features: list[str] | None = None,
    where: str = "features",
) -> dict[str, Any]:
    """The train stage's core: fit, calibrate on validation, choose τ; returns the bundle's parts (the
    keyword arguments of :func:`clinrisk.bundle.write_bundle` but ``cfg``). Reads the shards row group by
    row group (out of core), writes nothing; ``where`` names the dataset in errors."""
    import lightgbm as lgb

    from clinrisk.calibration import apply_calibration, fit_calibration, select_calibration
    from clinrisk.ood import fit_from_splits
    from clinrisk.threshold import select_threshold

    feature_names = resolve_features(spec.feature_names, selected_features, spec.forbidden)
    categorical = [n for n in feature_names if n in spec.categories]
    categories = {n: spec.categories[n] for n in categorical}

    rows = scan_splits(
        shards, feature_names, categories, max_train_rows=cfg.train.max_rows, seed=cfg.run.seed
    )
    train, stop, val = rows[TRAIN], rows[VALIDATION], rows[CALIBRATION]
    if train.n == 0:
        raise DataError(f"{where}: no training-split rows with sample_weight > 0")
    n_train_available = train.drawn_from or train.n
    if train.drawn_from is not None:
        log.info(
            "train.max_rows: training on %d of %d training rows (uniform, seeded)", train.n, train.drawn_from
        )
    if stop.n == 0 or val.n == 0:
        raise DataError(
            f"{where}: no validation-split rows in one of its two patient-grouped parts "
            f"(early stopping: {stop.n}, calibration: {val.n}; both are needed)"
        )
    y_st, w_st, _ = stop.arrays()
    y_va, w_va, rec_va = val.arrays()
    cw = float(cfg.train.positive_class_weight)
    # The training split's label and weight stay float32 (what LightGBM stores); float64 copies exist only
    # for the few summary numbers below, which keep their float64 values (bundle parity).
    y_tr, w_tr = (a.astype(np.float64) for a in train.labels_weights())
    if y_tr.sum() <= 0 or y_tr.sum() >= y_tr.size:
        raise DataError(f"{where}: training labels have a single class")
    # the objective follows the fitted labels; calibration-part labels may be expected (soft) true labels
    soft = is_soft(y_tr) or is_soft(y_st)
    train_label_mean = float(np.average(y_tr, weights=w_tr))
    del y_tr, w_tr
    objective = "cross_entropy" if soft or cfg.labels.strategy == "E2" else "binary"
    params = lgb_params(cfg, objective)
    ly_tr, lw_tr = lgb_label_weight(*train.labels_weights(), cw)
    ly_st, lw_st = class_weighted(y_st, w_st, cw)

    if cfg.train.engine == "dask":
        model_text, best = _fit_dask(
            cfg, params, train, stop, (ly_tr, lw_tr), (ly_st, lw_st), feature_names, categorical
        )
        final = lgb.Booster(model_str=model_text)
    else:
        model_text, best, final = _fit_local(
            cfg, params, train, stop, (ly_tr, lw_tr), (ly_st, lw_st), feature_names, categorical
        )

    # Calibration and threshold: the calibration part of validation only (patients disjoint from the
    # early-stopping part), original (soft) labels, odds-corrected logits.
    z_va = odds_correct_logit(_predict_raw(final, val.sequences), cw)
    if cfg.train.calibration == "select":
        pid_va = val.patient_ids()
        if pid_va.size != z_va.size:
            raise DataError(f"{where}: train.calibration=select needs the patient_id column")
        calibration = select_calibration(z_va, y_va, w_va, pid_va)
    else:
        calibration = fit_calibration(z_va, y_va, w_va, method=cfg.train.calibration)  # type: ignore[arg-type]
    p_va = apply_calibration(calibration, z_va)
    threshold = select_threshold(p_va, y_va, cfg.threshold, w_va)
    p_uncal = apply_calibration({"method": "none"}, z_va)
    metrics: dict[str, Any] = {
        "validation": validation_metrics(y_va, p_va),
        "validation_label_rec": validation_metrics(rec_va, p_va),
        "validation_uncalibrated": validation_metrics(y_va, p_uncal),
        "net_benefit_at_threshold": threshold["net_benefit"],
    }
    # The drift reference of the score covers the whole validation split (both parts, scored by the final
    # model and map): drift monitoring wants the largest in-distribution sample, not only the calibration part.
    p_stop = apply_calibration(calibration, odds_correct_logit(_predict_raw(final, stop.sequences), cw))
    p_ref = np.concatenate([np.asarray(p_stop, dtype=np.float64), np.asarray(p_va, dtype=np.float64)])
    reference = reference_stats(train, feature_names, categories, p_ref, cfg.run.seed)
    ood = fit_from_splits(
        train.sequences,
        val.sequences,
        feature_names,
        spec.dtypes,
        categorical,
        cfg.monitoring.calendar_trend_features,
        cfg.run.seed,
    )
    metadata = {
        "label_strategy": cfg.labels.strategy,
        "soft_labels": soft,
        "objective": objective,
        "positive_class_weight": cw,
        "calibration_method": calibration["method"],
        "n_train_rows": train.n,
        "n_train_rows_available": n_train_available,
        "train_max_rows": cfg.train.max_rows,
        "n_validation_rows": stop.n + val.n,
        "n_early_stopping_rows": stop.n,
        "n_calibration_rows": val.n,
        "validation_parts": "validation split cut by patient hash (patient_fold salt "
        f"{VALIDATION_PART_SALT}): early stopping on one part; calibration choice/fit, threshold check and "
        "the bundle's validation metrics on the other",
        "train_label_mean": train_label_mean,
        "best_iteration": int(best),
        "num_trees": int(final.num_trees()),
        "categorical_features": categorical,
        "lightgbm_version": lgb.__version__,
        "lgb_params": params,
        "seed": cfg.run.seed,
        **provenance,
    }
    metadata["data_hash"] = metadata.get("raw_manifest_hash") or metadata["features_hash"]
    return {
        "model_text": model_text,
        "spec": spec.model_dump(mode="json"),
        "feature_names": feature_names,
        "calibration": calibration,
        "threshold": threshold,
        "reference": reference,
        "metrics": metrics,
        "metadata": metadata,
        "ood": ood,
    }


def publish_bundle(cfg: ClinriskConfig, parts: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Write the bundle atomically at ``out_dir``; returns ``{"metadata", "metrics", "threshold",
    "bundle_dir"}`` (what tracking logs)."""
    from clinrisk.io import atomic_output_dir

    with atomic_output_dir(Path(out_dir)) as tmp:
        meta = write_bundle(tmp, cfg=cfg, **parts)
    metrics, threshold = parts["metrics"], parts["threshold"]
    log.info(
        "trained %s (%d trees, %s calibration), validation AP %.4f, τ = %.4f",
        meta["bundle_version"],
        meta["num_trees"],
        parts["calibration"]["method"],
        metrics["validation"].get("ap", math.nan),
        threshold["value"],
    )
    return {"metadata": meta, "metrics": metrics, "threshold": threshold, "bundle_dir": str(out_dir)}
