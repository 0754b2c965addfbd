"""Memory-planned, patient-grouped samples of a features dataset (step 1 of the selection) and the
step's RSS measurement."""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import polars as pl

from clinrisk.errors import DataError

if TYPE_CHECKING:
    from clinrisk.feature_table import FeatureSpec


F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
# Interpreter + polars + LightGBM + scipy code pages (measured ≈ 225 MB RSS after imports): the part of
# the budget that is not available for data.
_RESERVE_MB = 256
# Bytes per sample row per column at the step's peak: float32 matrix (4) + rank matrix or probe-augmented
# LightGBM matrix (4) + binned Dataset and its 50 % subset (1.5), rounded up.
_BYTES_PER_CELL = 10
_ROW_OVERHEAD_BYTES = 32  # patient id, label, weight, hashes


def stable_hash(ids: npt.ArrayLike, seed: int) -> npt.NDArray[np.uint64]:
    """splitmix64 of ``id ^ seed``: a platform- and version-stable 64-bit hash (polars' hash is not)."""
    x = np.asarray(ids, dtype=np.int64).view(np.uint64) ^ np.uint64(seed % 2**64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def bytes_per_row(n_features: int, n_probes: int) -> int:
    """Planned working bytes per sample row at the step's peak (see ``_BYTES_PER_CELL``); each probe
    has a held-out twin."""
    return _BYTES_PER_CELL * (n_features + 2 * n_probes) + _ROW_OVERHEAD_BYTES


def plan_sample_rows(memory_budget_mb: int, sample_rows: int, n_features: int, n_probes: int) -> int:
    """Row cap of the sample: ``sample_rows`` or what fits the data part of the budget, if smaller."""
    usable_mb = max(memory_budget_mb - _RESERVE_MB, memory_budget_mb // 4)
    fit = (usable_mb * 2**20) // bytes_per_row(n_features, n_probes)
    return int(max(1, min(sample_rows, fit)))


def rss_reset() -> str:
    """Reset the kernel's peak-RSS mark so the step's own peak is measured (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM (reset at step start)"
    except OSError:
        return "ru_maxrss (process lifetime)"


def rss_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb(method: str) -> float:
    """Peak RSS in MiB: VmHWM when it was reset, else ``ru_maxrss``."""
    if method.startswith("VmHWM"):
        v = rss_mb("VmHWM")
        if v is not None:
            return v
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------- sampling


@dataclass
class Sample:
    """A patient-grouped sample of one split: feature matrix (spec order) and targets."""

    X: F32
    y: F64
    w: F64
    patient: I64  # patient code 0..n_patients-1 per row
    n_patients: int
    rows_total: int  # eligible rows of the split in the dataset
    patients_total: int
    names: list[str]  # column names of X

    def columns(self, names: Sequence[str]) -> list[int]:
        """Column indices of ``names`` in X."""
        pos = {n: i for i, n in enumerate(self.names)}
        return [pos[n] for n in names]


def _spec_path(features_dir: Path) -> Path:
    return Path(features_dir) / "feature_spec.json"


def load_inputs(features_dir: Path) -> tuple[FeatureSpec, list[Path]]:
    """The feature spec and shard files; clear errors for a missing dir, spec or column."""
    from clinrisk.feature_table import FeatureSpec
    from clinrisk.io import list_shards

    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise DataError(f"{features_dir}: features directory not found (run `clinrisk features` first)")
    spec_file = _spec_path(features_dir)
    if not spec_file.is_file():
        raise DataError(f"{spec_file}: feature_spec.json missing in the features directory")
    spec = FeatureSpec.from_json(spec_file)
    shards = list_shards(features_dir)
    need = ["patient_id", "split", "label", "sample_weight", *spec.feature_names]
    for f in shards:
        try:
            have = set(pl.read_parquet_schema(f))
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise DataError(f"{f}: unreadable features shard ({exc})") from None
        missing = [c for c in need if c not in have]
        if missing:
            raise DataError(f"{f}: missing columns {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return spec, shards


def _split_filter(split: str) -> pl.Expr:
    return (pl.col("split").cast(pl.String) == split) & (pl.col("sample_weight") > 0)


def choose_patients(shards: Sequence[Path], split: str, row_cap: int, seed: int) -> tuple[I64, int, int]:
    """Patients of ``split`` in stable-hash order, as many whole patients as fit ``row_cap`` rows.

    Returns (chosen patient ids, rows of the split, patients of the split). Reads two columns per shard.
    """
    parts = []
    for f in shards:
        parts.append(
            pl.scan_parquet(f)
            .select("patient_id", "split", "sample_weight")
            .filter(_split_filter(split))
            .group_by("patient_id")
            .agg(pl.len().alias("n"))
            .collect(engine="streaming")
        )
    table = pl.concat(parts)
    if table.height == 0:
        return np.zeros(0, np.int64), 0, 0
    pid = table["patient_id"].cast(pl.Int64).to_numpy()
    n = table["n"].cast(pl.Int64).to_numpy()
    order = np.lexsort((pid, stable_hash(pid, seed)))
    cum = np.cumsum(n[order])
    k = int(np.searchsorted(cum, row_cap, side="right"))  # whole patients whose rows fit the cap
    return np.sort(pid[order[:k]]), int(n.sum()), int(pid.size)


def read_sample(
    shards: Sequence[Path],
    spec: FeatureSpec,
    split: str,
    patients: I64,
    features: Sequence[str] | None = None,
) -> tuple[F32, F64, F64, I64]:
    """Rows of ``split`` for ``patients``, shard by shard with projection: (X, y, w, patient_id).

    X is float32 in ``features`` order (default: the spec), categoricals as their Enum codes, null = NaN.
    """
    names = list(features if features is not None else spec.feature_names)
    keep = pl.Series("p", patients, dtype=pl.Int64)
    frames: list[pl.DataFrame] = []
    for f in shards:
        lf = (
            pl.scan_parquet(f)
            .select("patient_id", "split", "label", "sample_weight", *names)
            .filter(_split_filter(split) & pl.col("patient_id").cast(pl.Int64).is_in(keep.implode()))
        )
        try:
            df = lf.select(
                pl.col("patient_id").cast(pl.Int64),
                pl.col("label").cast(pl.Float64),
                pl.col("sample_weight").cast(pl.Float64),
                *[pl.col(n).cast(spec.polars_dtype(n)) for n in names],
            ).collect(engine="streaming")
        except pl.exceptions.PolarsError as exc:
            raise DataError(f"{f}: feature columns do not match feature_spec.json dtypes ({exc})") from None
        frames.append(df)
    df = pl.concat(frames)
    y = df["label"].to_numpy()
    if np.isnan(y).any() or (y < 0).any() or (y > 1).any():
        raise DataError(f"label: {split} rows need labels in [0, 1] without nulls")
    X = np.empty((df.height, len(names)), dtype=np.float32)
    for j, n in enumerate(names):
        s = df[n]
        if isinstance(s.dtype, pl.Enum):
            s = s.to_physical()
        X[:, j] = s.cast(pl.Float32).fill_null(float("nan")).to_numpy()
    pid = df["patient_id"].to_numpy()
    w = df["sample_weight"].to_numpy()
    del df, frames
    return X, y, w, pid


def draw_sample(
    shards: Sequence[Path], spec: FeatureSpec, split: str, row_cap: int, seed: int
) -> Sample | None:
    """The patient-grouped sample of ``split`` (None if the split has no usable rows)."""
    chosen, rows_total, patients_total = choose_patients(shards, split, row_cap, seed)
    if chosen.size == 0:
        return None
    X, y, w, pid = read_sample(shards, spec, split, chosen)
    _, codes = np.unique(pid, return_inverse=True)
    names = list(spec.feature_names)
    return Sample(X, y, w, codes.astype(np.int64), int(chosen.size), rows_total, patients_total, names)
