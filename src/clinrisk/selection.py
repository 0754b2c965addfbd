"""Feature selection under a memory budget (docs/science.md §5.2 steps 4-5, measured as in §5.3).

``select_features(cfg, features_dir, out_dir)``:

1. **Sample.** A patient-grouped sample of TRAINING-split rows (``sample_weight > 0``): whole patients,
   chosen by a stable hash of ``patient_id`` (splitmix64, seeded), as many as fit
   ``min(select.sample_rows, budget rows)``. Shards are read one at a time with column projection and
   a patient filter, so the step never holds more than the sample.
2. **Cheap filters** on the sample: > ``max_missing_share`` missing; constant / near-constant (one value
   covers ≥ ``near_constant_share`` of non-missing rows); correlation clustering by Spearman |ρ| (Pearson
   on ranks, pairwise-complete rows) with complete linkage at ``correlation_threshold`` - only between
   features present on nearly the same rows (co-presence Jaccard ≥ ``min_copresence``; ``hba1c_locf``
   equals ``hba1c_last_3y`` where both exist but exists on far more rows) - keeping per cluster the member
   with the best univariate AP, then the least missingness.
3. **Stability selection with probes:** ``n_probes`` probe columns (permuted copies of real features
   spread over kinds and cardinalities - categoricals first - and pure Gaussian noise) join the
   survivors; ``rounds`` shallow LightGBM fits (``num_leaves``, feature_fraction 0.8, max_bin 63,
   ``probe_rounds_boost`` rounds, smoothed categorical splits) on 50 % patient subsamples. A feature's
   selection frequency is the share of rounds in which its normalised gain exceeds its probe bar:
   ``matched`` (default) - the max gain of the probes with no more splitting freedom (no more distinct
   values; no categorical probe for a numeric feature; at least 3 probes); ``max`` - the max of all
   probes, which a permuted 64-level categorical dominates (it won ~10 % of the gain on generated data,
   so only 2 of 156 features passed). Features with frequency ≥ ``min_frequency`` are selected. A
   second, held-out set of probes (same recipe) is scored exactly like real features; its selection
   rate is the reported probe false-selection rate.
4. **Measure:** ΔAP / ΔBrier of a deterministic LightGBM (no feature/row subsampling, so the difference
   is the feature sets', not the seed's) on the selected vs the full feature set (trained on the sample,
   evaluated on a patient-grouped validation sample), recall of the generator's hazard-input families
   (:data:`HAZARD_FAMILIES`), false-selection rates of probes and of the noise code, stability (mean
   pairwise Jaccard of per-round selected sets) and the step's peak RSS.

LightGBM threads: ``select.num_threads``, else ``train.num_threads``, else the cores actually available
(affinity and cgroup quota, not ``os.cpu_count()``).

Output (atomic): ``out_dir/selected_features.json``.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import polars as pl

from clinrisk.errors import ConfigError, DataError

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig
    from clinrisk.feature_table import FeatureSpec

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

SELECTION_FILE = "selected_features.json"
SELECTION_VERSION = 1

#: The generator's true hazard inputs (docs/science.md §1.6 η, plus the antipsychotic term of §1.5), as
#: feature-name families: a feature belongs to a family if its name equals a prefix or starts with
#: ``prefix + "_"``. Matches ``clinrisk.features.feature_layout`` names (e.g. ``hba1c_slope_3y``,
#: ``dx_E28_2_ever``); update here if feature names change. A family counts as recovered when any of
#: its members is selected.
HAZARD_FAMILIES: dict[str, tuple[str, ...]] = {
    "glycaemia": ("hba1c", "glucose"),
    "glycaemic_slope": ("hba1c_slope", "glucose_slope"),
    "adiposity": ("bmi", "weight"),
    "age": ("age",),
    "sex": ("sex",),
    "family_history": ("family_history",),
    "ethnicity": ("ethnicity",),
    "triglycerides": ("tg",),
    "hdl": ("hdl",),
    "sbp": ("sbp",),
    "pcos": ("dx_E28_2",),
    "gdm": ("dx_O24_4",),
    "glucocorticoid": ("rx_glucocorticoid",),
    "antipsychotic": ("rx_antipsychotic",),
    "statin": ("rx_statin",),
}
#: Outcome-independent noise (the Zipf ``other_dx_code``); selecting it is a false selection.
NOISE_PREFIXES: tuple[str, ...] = ("other_dx_code",)

PROBE_PREFIX = "__probe_"
HELDOUT_PREFIX = "__heldout_probe_"
# Interpreter + polars + LightGBM + scipy code pages (measured ≈ 225 MB RSS after imports): the part of
# the budget that is not available for data.
_RESERVE_MB = 256
# Bytes per sample row per column at the step's peak: float32 matrix (4) + rank matrix or probe-augmented
# LightGBM matrix (4) + binned Dataset and its 50 % subset (1.5), rounded up.
_BYTES_PER_CELL = 10
_ROW_OVERHEAD_BYTES = 32  # patient id, label, weight, hashes
_UNIVARIATE_BINS = 32
_MIN_PAIR_ROWS = 30  # fewer overlapping rows: correlation unknown, never clustered
_CORR_BLOCK_ROWS = 65_536
_ACCEPT_DELTA_AP = -0.005  # docs/science.md §5.3 acceptance
_ACCEPT_DELTA_BRIER = 0.0005


# ------------------------------------------------------------------------------------------- helpers


def family_members(names: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """Names equal to a prefix or starting with ``prefix_``."""
    return [n for n in names if any(n == p or n.startswith(p + "_") for p in prefixes)]


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


def _rss_reset() -> str:
    """Reset the kernel's peak-RSS mark so the step's own peak is measured (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM (reset at step start)"
    except OSError:
        return "ru_maxrss (process lifetime)"


def _rss_mb(key: str) -> float | None:
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
        v = _rss_mb("VmHWM")
        if v is not None:
            return v
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def weighted_ap(y: F64, score: F64, w: F64) -> float:
    """Average precision (soft labels and weights allowed), via ``clinrisk.metrics``."""
    from clinrisk.metrics import average_precision

    return float(average_precision(y, score, sample_weight=w))


def weighted_brier(y: F64, p: F64, w: F64) -> float:
    """Weighted mean squared error of the risk."""
    return float(np.sum(w * (p - y) ** 2) / np.sum(w))


def binned_ap(bins: I64, n_bins: int, y: F64, w: F64) -> float:
    """Univariate AP of a binned feature scored by its bins' mean label (direction-free, missing = a bin).

    Exact AP over the ≤ ``n_bins`` distinct scores (tied scores form one threshold, as in sklearn).
    """
    pos = np.bincount(bins, weights=w * y, minlength=n_bins)
    tot = np.bincount(bins, weights=w, minlength=n_bins)
    used = tot > 0
    pos, tot = pos[used], tot[used]
    score = pos / tot
    uniq, inv = np.unique(-score, return_inverse=True)  # descending score
    tp = np.bincount(inv, weights=pos, minlength=uniq.size).cumsum()
    n = np.bincount(inv, weights=tot, minlength=uniq.size).cumsum()
    if tp[-1] <= 0:
        return 0.0
    recall = tp / tp[-1]
    precision = tp / n
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


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


# ------------------------------------------------------------------------------------------- filters


@dataclass
class FilterResult:
    """Per-feature filter decisions and the survivors (spec order)."""

    kept: list[str]
    decisions: dict[str, dict[str, Any]]
    clusters: list[list[str]] = field(default_factory=list)


def _column_stats(col: F32, is_cat: bool) -> tuple[float, float, F32 | None, I64]:
    """(missing share, mode share, centred ranks or None if constant, univariate bin per row)."""
    n = col.size
    present = ~np.isnan(col)
    vals = col[present]
    m = vals.size
    bins = np.full(n, _UNIVARIATE_BINS if not is_cat else 0, dtype=np.int64)
    if m == 0:
        return 1.0, 1.0, None, bins
    order = np.argsort(vals, kind="stable")
    s = vals[order]
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    runs = np.diff(np.concatenate([starts, [m]]))
    mode_share = float(runs.max() / m)
    # average ranks of ties (1-based), centred and scaled to about [-0.5, 0.5] for float32 precision
    avg = starts + (runs + 1) / 2.0
    ranks_sorted = np.repeat(avg, runs)
    ranks = np.empty(m, dtype=np.float64)
    ranks[order] = ranks_sorted
    z = np.zeros(n, dtype=np.float32)
    z[present] = ((ranks - (m + 1) / 2.0) / m).astype(np.float32)
    if is_cat:
        codes = vals.astype(np.int64)
        bins = np.full(n, int(codes.max()) + 1, dtype=np.int64)  # missing = one past the last code
        bins[present] = codes
    else:
        bins[present] = np.minimum(
            ((ranks - 1) * _UNIVARIATE_BINS / m).astype(np.int64), _UNIVARIATE_BINS - 1
        )
    return 1.0 - m / n, mode_share, (z if starts.size > 1 else None), bins


def pairwise_spearman(X: F32, Z: F32, cols: Sequence[int]) -> tuple[F64, F64]:
    """|ρ| matrix over ``cols`` (Pearson on centred ranks ``Z`` using only rows where both are present)
    and the co-presence matrix: rows where both are present / rows where either one is (Jaccard).

    Accumulates N, Σx, Σx², Σxy over row blocks, so no extra n × p array is materialised.
    """
    c = list(cols)
    k = len(c)
    N = np.zeros((k, k))
    Sx = np.zeros((k, k))
    Sxx = np.zeros((k, k))
    Sxy = np.zeros((k, k))
    for a in range(0, X.shape[0], _CORR_BLOCK_ROWS):
        b = min(a + _CORR_BLOCK_ROWS, X.shape[0])
        Mb = (~np.isnan(X[a:b][:, c])).astype(np.float32)
        Zb = Z[a:b][:, c]
        N += Mb.T @ Mb
        Sx += Zb.T @ Mb  # Σ z_i over rows where j present
        Sxx += (Zb * Zb).T @ Mb
        Sxy += Zb.T @ Zb  # missing z are 0
    num = N * Sxy - Sx * Sx.T
    var_i = N * Sxx - Sx * Sx
    den = np.sqrt(np.clip(var_i, 0, None) * np.clip(var_i.T, 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where((den > 0) & (N >= _MIN_PAIR_ROWS), num / den, 0.0)
    r = np.clip(np.abs(r), 0.0, 1.0)
    np.fill_diagonal(r, 1.0)
    n_i = np.diag(N)
    union = n_i[:, None] + n_i[None, :] - N
    with np.errstate(invalid="ignore", divide="ignore"):
        co = np.where(union > 0, N / union, 1.0)
    return np.asarray(r, dtype=np.float64), np.asarray(co, dtype=np.float64)


def cheap_filters(
    X: F32,
    y: F64,
    w: F64,
    names: Sequence[str],
    categorical: set[str],
    *,
    max_missing_share: float,
    near_constant_share: float,
    correlation_threshold: float,
    min_copresence: float = 0.0,
) -> FilterResult:
    """Missing / constant / near-constant / correlated filters on the sample (docs/science.md §5.2 step 4).

    Two features are redundant only if |ρ| ≥ ``correlation_threshold`` on the rows where both are present
    AND they are present on nearly the same rows (co-presence Jaccard ≥ ``min_copresence``): ``hba1c_locf``
    equals ``hba1c_last_3y`` wherever both exist, but carries a value on many more rows, so dropping it
    would lose information that the rank correlation cannot see.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n, p = X.shape
    decisions: dict[str, dict[str, Any]] = {}
    Z = np.zeros((n, p), dtype=np.float32, order="F")
    survivors: list[int] = []
    for j, name in enumerate(names):
        miss, mode_share, z, bins = _column_stats(X[:, j], name in categorical)
        d: dict[str, Any] = {"missing_share": round(miss, 6), "mode_share": round(mode_share, 6)}
        decisions[name] = d
        if miss > max_missing_share:
            d.update(decision="dropped", reason="missing")
            continue
        if z is None:
            d.update(decision="dropped", reason="constant")
            continue
        if mode_share >= near_constant_share:
            d.update(decision="dropped", reason="near_constant")
            continue
        d["univariate_ap"] = round(binned_ap(bins, int(bins.max()) + 1, y, w), 6)
        Z[:, j] = z
        survivors.append(j)

    clusters: list[list[str]] = []
    kept = set(survivors)
    if len(survivors) > 1:
        R, co = pairwise_spearman(X, Z, survivors)
        del Z
        D = np.where(co >= min_copresence, 1.0 - R, 1.0)
        np.fill_diagonal(D, 0.0)
        dist = squareform(D, checks=False)
        labels = fcluster(
            linkage(dist, method="complete"), t=1.0 - correlation_threshold, criterion="distance"
        )
        for lab in np.unique(labels):
            members = [i for i, lb in enumerate(labels) if lb == lab]
            if len(members) < 2:
                continue
            # best univariate AP (to 3 decimals), then least missing, then spec order
            best = min(
                members,
                key=lambda i: (
                    -round(decisions[names[survivors[i]]]["univariate_ap"], 3),
                    decisions[names[survivors[i]]]["missing_share"],
                    survivors[i],
                ),
            )
            keep_name = names[survivors[best]]
            clusters.append([keep_name, *[names[survivors[i]] for i in members if i != best]])
            for i in members:
                if i == best:
                    continue
                nm = names[survivors[i]]
                decisions[nm].update(
                    decision="dropped",
                    reason="correlated",
                    correlated_with=keep_name,
                    rho=round(float(R[i, best]), 6),
                )
                kept.discard(survivors[i])
    for j in kept:
        decisions[names[j]]["decision"] = "kept"
    return FilterResult([names[j] for j in sorted(kept)], decisions, clusters)


# ------------------------------------------------------------------------------------------- stability


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota.

    ``os.cpu_count()`` is the host's count inside a container; LightGBM's OpenMP threads beyond the cores
    actually available wait on each other at every barrier (measured: 7x slower on a busy 2-core host).
    """
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(float(quota) // float(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _lgb_threads(cfg: ClinriskConfig) -> int:
    return int(cfg.select.num_threads or cfg.train.num_threads or available_cores())


def shallow_params(cfg: ClinriskConfig, soft: bool, seed: int) -> dict[str, Any]:
    """The shallow, deterministic LightGBM of the stability fits (docs/science.md §5.2 step 5)."""
    return {
        "objective": "cross_entropy" if soft else "binary",
        "num_leaves": cfg.select.num_leaves,
        "feature_fraction": 0.8,
        "max_bin": 63,
        "learning_rate": 0.1,
        # train.* regularisation: small leaves let continuous noise (and probes) win gain by overfitting
        "min_data_in_leaf": cfg.train.min_data_in_leaf,
        "lambda_l2": cfg.train.lambda_l2,
        # A many-level categorical (site_id: 64 levels) otherwise wins ~10 % of the gain with many-vs-many
        # splits fitted to noise, and its permuted probe nearly as much; smoothing shrinks both.
        "cat_smooth": 50.0,
        "min_data_per_group": 200,
        "max_cat_threshold": 16,
        "num_threads": _lgb_threads(cfg),
        "seed": seed % (2**31 - 1),
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }


def n_distinct(col: F32, cap: int = 64) -> int:
    """Distinct non-missing values, capped at ``cap`` (beyond max_bin = 63 LightGBM sees no difference)."""
    v = col[~np.isnan(col)]
    return int(min(np.unique(v).size, cap))


def _spread(order: Sequence[int], k: int) -> list[int]:
    """``k`` members of ``order`` at evenly spaced ranks, both ends included."""
    if k <= 0 or not order:
        return []
    pos = np.unique(np.linspace(0, len(order) - 1, min(k, len(order))).round().astype(np.int64))
    return [int(order[p]) for p in pos]


def probe_sources(
    names: Sequence[str],
    categorical: set[str],
    n_perm: int,
    rng: np.random.Generator,
    card: Sequence[int] | None = None,
) -> list[int]:
    """Features to permute into probes, spread over kinds and cardinalities.

    Gain's bias depends on the kind (LightGBM's many-vs-many categorical splits win far more gain than a
    numeric split) and grows with the number of distinct values, so every real feature needs probes of its
    own kind with no more distinct values than itself (the ``matched`` bar). Categoricals come first (up to
    half the slots: one per distinct cardinality, spread from the fewest to the most levels, then extra
    copies of the many-level ones), then numeric features at evenly spaced cardinality ranks (binary flags
    ... continuous). Without ``card``, categoricals first, then random others.
    """
    cats = [i for i, nm in enumerate(names) if nm in categorical]
    rest = [i for i, nm in enumerate(names) if nm not in categorical]
    if card is None:
        sources = cats[:n_perm]
        if len(sources) < n_perm and rest:
            extra = rng.choice(rest, size=min(n_perm - len(sources), len(rest)), replace=False)
            sources += [int(i) for i in extra]
    else:
        tie = rng.random(len(names))
        by_card: dict[int, int] = {}
        for i in sorted(cats, key=lambda i: (card[i], tie[i])):
            by_card.setdefault(int(card[i]), i)  # one source per distinct cardinality
        cat_slots = min(len(cats), math.ceil(n_perm / 2))
        cat_src = _spread(list(by_card.values()), min(len(by_card), cat_slots))
        # Spare categorical slots: more copies of the many-level ones, whose null gain varies most (one
        # probe alone is beaten by a noise code in about half of the rounds).
        many = sorted((i for i in cats if card[i] >= 16), key=lambda i: (-card[i], tie[i]))
        for r in range(cat_slots - len(cat_src)):
            if not many:
                break
            cat_src.append(many[r % len(many)])
        num_src = _spread(sorted(rest, key=lambda i: (card[i], tie[i])), n_perm - len(cat_src))
        sources = cat_src + num_src
    while names and len(sources) < n_perm:  # fewer features than probes: reuse with replacement
        sources.append(int(rng.integers(len(names))))
    return sources


def make_probes(
    X: F32,
    names: Sequence[str],
    categorical: set[str],
    sources: Sequence[int],
    n_probes: int,
    rng: np.random.Generator,
    prefix: str,
) -> tuple[list[str], list[F32], list[bool], dict[str, str]]:
    """Probe columns: a row-permuted copy of each source feature, then Gaussian noise up to ``n_probes``."""
    n = X.shape[0]
    out_names: list[str] = []
    cols: list[F32] = []
    is_cat: list[bool] = []
    origin: dict[str, str] = {}
    for k, j in enumerate(sources):
        nm = f"{prefix}perm{k}__{names[j]}"
        out_names.append(nm)
        cols.append(X[rng.permutation(n), j])
        is_cat.append(names[j] in categorical)
        origin[nm] = f"permuted:{names[j]}"
    for k in range(n_probes - len(sources)):
        nm = f"{prefix}noise{k}"
        out_names.append(nm)
        cols.append(np.asarray(rng.standard_normal(n), dtype=np.float32))
        is_cat.append(False)
        origin[nm] = "noise:normal"
    return out_names, cols, is_cat, origin


def matched_threshold(
    probe_gain: F64,
    probe_card: I64,
    target_card: I64,
    probe_cat: npt.NDArray[np.bool_] | None = None,
    target_cat: npt.NDArray[np.bool_] | None = None,
    min_pool: int = 3,
) -> F64:
    """Per-round bar for each target column: the max gain of the probes with no more splitting freedom than
    the target - no more distinct values (gain grows with cardinality) and, when kinds are given, no
    categorical probe for a numeric target (a many-vs-many categorical split wins more gain than any
    numeric split; a numeric probe is a fair null for a categorical target). If none qualifies, the
    lowest-cardinality probes of the allowed kinds. The pool holds at least ``min_pool`` probes (topped up
    with the next-lowest cardinalities): against a single probe a null feature wins half of the rounds."""
    out = np.empty((probe_gain.shape[0], target_card.size))
    for t, c in enumerate(target_card):
        pool = np.ones(probe_card.size, dtype=bool)
        if probe_cat is not None and target_cat is not None and not target_cat[t]:
            numeric = ~probe_cat
            if numeric.any():
                pool = numeric
        ok = pool & (probe_card <= c)
        if ok.sum() < min_pool:
            allowed = np.flatnonzero(pool)
            ok[allowed[np.argsort(probe_card[allowed], kind="stable")[:min_pool]]] = True
        out[:, t] = probe_gain[:, ok].max(axis=1)
    return out


def _jaccard_mean(sets: list[set[str]]) -> float:
    vals = []
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            u = sets[a] | sets[b]
            vals.append(len(sets[a] & sets[b]) / len(u) if u else 1.0)
    return float(np.mean(vals)) if vals else 1.0


def stability_selection(
    cfg: ClinriskConfig, sample: Sample, names: Sequence[str], categorical: set[str], seed: int
) -> dict[str, Any]:
    """Probe-thresholded stability selection on 50 % patient subsamples (docs/science.md §5.2 step 5)."""
    import lightgbm as lgb

    sc = cfg.select
    rng = np.random.default_rng([seed, 1])
    idx = sample.columns(names)
    X = sample.X[:, idx]
    matched = sc.probe_threshold == "matched"
    card_x = np.array([n_distinct(X[:, i]) for i in range(X.shape[1])]) if matched else None
    sources = probe_sources(
        names, categorical, math.ceil(sc.n_probes / 2), rng, card_x.tolist() if card_x is not None else None
    )
    # Threshold probes set the bar; held-out probes (same recipe, fresh permutations/noise) are scored
    # like real features, so their selection rate estimates the false-selection rate of null features.
    probe_names, probe_cols, probe_cat, origin = make_probes(
        X, names, categorical, sources, sc.n_probes, rng, PROBE_PREFIX
    )
    held_names, held_cols, held_cat, held_origin = make_probes(
        X, names, categorical, sources, sc.n_probes, rng, HELDOUT_PREFIX
    )
    all_names = [*names, *probe_names, *held_names]
    M = np.empty((sample.X.shape[0], len(all_names)), dtype=np.float32)
    M[:, : len(names)] = X
    del X
    for k, col in enumerate([*probe_cols, *held_cols]):
        M[:, len(names) + k] = col
    del probe_cols, held_cols
    cat_flags = [nm in categorical for nm in names] + probe_cat + held_cat
    card = None
    if card_x is not None:
        # a permuted probe has its source's cardinality; noise is continuous (capped at 64)
        card_p = [n_distinct(M[:, i]) for i in range(len(names), M.shape[1])]
        card = np.concatenate([card_x, np.array(card_p, dtype=np.int64)])
    cat_idx = [i for i, c in enumerate(cat_flags) if c]
    soft = bool(np.any((sample.y > 0) & (sample.y < 1)))
    params = shallow_params(cfg, soft, seed)
    full = lgb.Dataset(
        M,
        label=sample.y,
        weight=sample.w,
        feature_name=[f"f{i}" for i in range(len(all_names))],  # LightGBM-safe names
        categorical_feature=cat_idx,
        params={
            "max_bin": 63,
            "verbosity": -1,
            "feature_pre_filter": False,
            "seed": params["seed"],
            "num_threads": params["num_threads"],
        },
        free_raw_data=True,
    ).construct()
    del M

    p_real = len(names)
    gains = np.zeros((sc.rounds, len(all_names)))
    for b in range(sc.rounds):
        half = np.random.default_rng([seed, 2, b]).random(sample.n_patients) < 0.5
        rows = np.flatnonzero(half[sample.patient]).astype(np.int32)
        sub = full.subset(cast(Any, rows))  # LightGBM accepts an int32 array
        booster = lgb.train({**params, "seed": (seed + b) % (2**31 - 1)}, sub, sc.probe_rounds_boost)
        g = np.asarray(booster.feature_importance("gain"), dtype=np.float64)
        gains[b] = g / g.sum() if g.sum() > 0 else g
        del booster, sub
    del full

    k = len(probe_names)
    real, probes, held = gains[:, :p_real], gains[:, p_real : p_real + k], gains[:, p_real + k :]
    max_probe = probes.max(axis=1)
    if card is not None:
        kind = np.array(cat_flags, dtype=bool)
        card_real, card_probe, card_held = card[:p_real], card[p_real : p_real + k], card[p_real + k :]
        kind_real, kind_probe, kind_held = kind[:p_real], kind[p_real : p_real + k], kind[p_real + k :]
        bar_real = matched_threshold(probes, card_probe, card_real, kind_probe, kind_real)
        bar_held = matched_threshold(probes, card_probe, card_held, kind_probe, kind_held)
    else:
        bar_real = np.repeat(max_probe[:, None], p_real, axis=1)
        bar_held = np.repeat(max_probe[:, None], k, axis=1)
    passed = real > bar_real
    held_pass = held > bar_held
    freq = passed.mean(axis=0)
    held_freq = held_pass.mean(axis=0)
    round_sets = [{names[int(j)] for j in np.flatnonzero(passed[b])} for b in range(sc.rounds)]
    return {
        "frequency": {nm: float(freq[j]) for j, nm in enumerate(names)},
        "mean_gain": {nm: float(real[:, j].mean()) for j, nm in enumerate(names)},
        "mean_bar": {nm: float(bar_real[:, j].mean()) for j, nm in enumerate(names)},
        "probe_names": probe_names,
        "probe_origin": origin,
        "probe_mean_gain": {nm: float(probes[:, k].mean()) for k, nm in enumerate(probe_names)},
        "heldout_origin": held_origin,
        "heldout_mean_gain": {nm: float(held[:, j].mean()) for j, nm in enumerate(held_names)},
        "heldout_frequency": {nm: float(held_freq[j]) for j, nm in enumerate(held_names)},
        "max_probe_gain_per_round": [float(v) for v in max_probe],
        "round_selected_counts": [len(s) for s in round_sets],
        "mean_pairwise_jaccard": _jaccard_mean(round_sets),
    }


# ------------------------------------------------------------------------------------------- measurement


def quick_compare(
    cfg: ClinriskConfig,
    train: Sample,
    valid: Sample,
    all_names: Sequence[str],
    selected: Sequence[str],
    categorical: set[str],
    seed: int,
) -> dict[str, Any]:
    """Validation AP/Brier of the same quick LightGBM on the full vs the selected feature set.

    The learner is deterministic (no feature or row subsampling) with a moderate learning rate, so the
    difference reflects the feature sets rather than the seed: with ``feature_fraction`` 0.8 the full set's
    validation AP alone moved by ±0.005 between seeds, the size of the acceptance margin.
    """
    import lightgbm as lgb

    soft = bool(np.any((train.y > 0) & (train.y < 1)))
    params = {
        **shallow_params(cfg, soft, seed),
        "num_leaves": 31,
        "feature_fraction": 1.0,
        "learning_rate": 0.05,
    }
    out: dict[str, Any] = {}
    for label, cols in (("full", list(all_names)), ("selected", list(selected))):
        idx = train.columns(cols)
        Xt = train.X if len(idx) == train.X.shape[1] else train.X[:, idx]
        ds = lgb.Dataset(
            Xt,
            label=train.y,
            weight=train.w,
            feature_name=[f"f{i}" for i in range(len(cols))],
            categorical_feature=[i for i, c in enumerate(cols) if c in categorical],
            params={"max_bin": 63, "verbosity": -1, "feature_pre_filter": False},
            free_raw_data=True,
        )
        booster = lgb.train(params, ds, cfg.select.compare_rounds)
        Xv = valid.X if len(idx) == valid.X.shape[1] else valid.X[:, idx]
        p = np.clip(np.asarray(booster.predict(Xv), dtype=np.float64), 0.0, 1.0)
        out[label] = {
            "n_features": len(cols),
            "ap": weighted_ap(valid.y, p, valid.w),
            "brier": weighted_brier(valid.y, p, valid.w),
        }
        del ds, booster, Xt, Xv
    d_ap = out["selected"]["ap"] - out["full"]["ap"]
    d_brier = out["selected"]["brier"] - out["full"]["brier"]
    out.update(
        delta_ap=d_ap,
        delta_brier=d_brier,
        acceptable=bool(d_ap >= _ACCEPT_DELTA_AP and d_brier <= _ACCEPT_DELTA_BRIER),
        acceptance={"delta_ap_min": _ACCEPT_DELTA_AP, "delta_brier_max": _ACCEPT_DELTA_BRIER},
        validation_rows=int(valid.X.shape[0]),
        validation_patients=valid.n_patients,
    )
    return out


def selection_quality(
    feature_names: Sequence[str], selected: Sequence[str], probe_frequency: dict[str, float], min_freq: float
) -> dict[str, Any]:
    """Recall of the hazard-input families, false-selection rates of (held-out) probes and of the noise
    code."""
    sel = set(selected)
    families: dict[str, Any] = {}
    for fam, prefixes in HAZARD_FAMILIES.items():
        members = family_members(feature_names, prefixes)
        families[fam] = {
            "members": len(members),
            "selected": [m for m in members if m in sel],
            "recovered": any(m in sel for m in members) if members else None,
        }
    present = [f for f in families.values() if f["recovered"] is not None]
    noise = family_members(feature_names, NOISE_PREFIXES)
    probes_selected = [n for n, f in probe_frequency.items() if f >= min_freq]
    return {
        "hazard_family_recall": (sum(f["recovered"] for f in present) / len(present)) if present else None,
        "hazard_families": families,
        "hazard_families_missing_from_spec": [k for k, f in families.items() if f["recovered"] is None],
        "probe_false_selection_rate": (len(probes_selected) / len(probe_frequency))
        if probe_frequency
        else None,
        "probes_selected": probes_selected,
        "noise_features": noise,
        "noise_selected": [n for n in noise if n in sel],
        "noise_false_selection_rate": (sum(n in sel for n in noise) / len(noise)) if noise else None,
    }


# ------------------------------------------------------------------------------------------- the step


def select_features(cfg: ClinriskConfig, features_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Run feature selection on ``features_dir`` and publish ``out_dir/selected_features.json`` atomically.

    Returns the JSON document. Deterministic given the config (``run.seed``) and the data.
    """
    from clinrisk.feature_table import categorical_features
    from clinrisk.io import atomic_output_dir, write_json

    t0 = time.perf_counter()
    rss_method = _rss_reset()
    rss_start = _rss_mb("VmRSS")
    sc = cfg.select
    seed = int(cfg.run.seed)
    spec, shards = load_inputs(Path(features_dir))
    names = list(spec.feature_names)
    categorical = set(categorical_features(spec))
    doc: dict[str, Any] = {
        "version": SELECTION_VERSION,
        "enabled": sc.enabled,
        "seed": seed,
        "config": sc.model_dump(mode="json"),
        "features_dir": str(features_dir),
        "n_features_before": len(names),
    }
    if not sc.enabled:
        doc.update(
            selected=names,
            n_features_after_filters=len(names),
            n_features_selected=len(names),
            note="select.enabled is false: every feature is selected",
        )
    else:
        doc.update(_run_selection(cfg, spec, shards, names, categorical, seed))
    peak = peak_rss_mb(rss_method)
    doc["resources"] = {
        "peak_rss_mb": round(peak, 1),
        "rss_start_mb": round(rss_start, 1) if rss_start is not None else None,
        "peak_rss_method": rss_method,
        "memory_budget_mb": sc.memory_budget_mb,
        "within_budget": bool(peak <= sc.memory_budget_mb),
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    with atomic_output_dir(Path(out_dir)) as tmp:
        write_json(tmp / SELECTION_FILE, doc)
    return doc


def _run_selection(
    cfg: ClinriskConfig,
    spec: FeatureSpec,
    shards: list[Path],
    names: list[str],
    categorical: set[str],
    seed: int,
) -> dict[str, Any]:
    sc = cfg.select
    cap = plan_sample_rows(sc.memory_budget_mb, sc.sample_rows, len(names), sc.n_probes)
    train = draw_sample(shards, spec, "train", cap, seed)
    if train is None:
        raise DataError(f"{shards[0].parent.parent}: no training-split rows with sample_weight > 0")
    if not 0 < float(np.sum(train.w * train.y)) < float(np.sum(train.w)):
        raise DataError("label: the training sample has a single class; cannot rank features")
    filt = cheap_filters(
        train.X,
        train.y,
        train.w,
        names,
        categorical,
        max_missing_share=sc.max_missing_share,
        near_constant_share=sc.near_constant_share,
        correlation_threshold=sc.correlation_threshold,
        min_copresence=sc.min_copresence,
    )
    if not filt.kept:
        raise DataError("features: every feature was dropped by the cheap filters (see select.* thresholds)")
    stab = stability_selection(cfg, train, filt.kept, categorical, seed)
    freq = stab["frequency"]
    chosen = {n for n, f in freq.items() if f >= sc.min_frequency}
    fallback = False
    if not chosen:  # weak signal: keep the most frequently selected features rather than none
        top = max(freq.values())
        chosen = {n for n, f in freq.items() if f == top}
        fallback = True
    selected = [n for n in names if n in chosen]
    for n in filt.kept:
        filt.decisions[n]["selection_frequency"] = freq[n]
        filt.decisions[n]["selected"] = n in chosen
    dropped: dict[str, list[str]] = {}
    for n in names:
        d = filt.decisions[n]
        if d["decision"] == "dropped":
            dropped.setdefault(d["reason"], []).append(n)
        elif n not in chosen:
            dropped.setdefault("unstable", []).append(n)

    valid_cap = plan_sample_rows(sc.memory_budget_mb, sc.sample_rows, len(names), 0)
    valid = draw_sample(shards, spec, "validation", valid_cap, seed)
    if valid is not None and 0 < float(np.sum(valid.w * valid.y)) < float(np.sum(valid.w)):
        evaluation: dict[str, Any] = quick_compare(cfg, train, valid, names, selected, categorical, seed)
    else:
        evaluation = {"skipped": "no validation rows with both classes"}
    quality = selection_quality(names, selected, stab["heldout_frequency"], sc.min_frequency)
    return {
        "selected": selected,
        "n_features_after_filters": len(filt.kept),
        "n_features_selected": len(selected),
        "fallback_top_frequency": fallback,
        "selection_frequency": freq,
        "filters": filt.decisions,
        "dropped": dropped,
        "clusters": filt.clusters,
        "probes": {
            "names": stab["probe_names"],
            "origin": stab["probe_origin"],
            "mean_normalised_gain": stab["probe_mean_gain"],
            "max_gain_per_round": stab["max_probe_gain_per_round"],
            "heldout_origin": stab["heldout_origin"],
            "heldout_mean_normalised_gain": stab["heldout_mean_gain"],
            "heldout_frequency": stab["heldout_frequency"],
        },
        "mean_normalised_gain": stab["mean_gain"],
        "stability": {
            "rounds": sc.rounds,
            "mean_pairwise_jaccard": stab["mean_pairwise_jaccard"],
            "round_selected_counts": stab["round_selected_counts"],
        },
        "sample": {
            "rows": int(train.X.shape[0]),
            "patients": train.n_patients,
            "train_rows_total": train.rows_total,
            "train_patients_total": train.patients_total,
            "row_cap": cap,
            "bytes_per_row_plan": bytes_per_row(len(names), sc.n_probes),
            "matrix_bytes": int(train.X.nbytes),
        },
        "evaluation": evaluation,
        "quality": quality,
    }


def load_selected_features(path: Path) -> list[str]:
    """The selected feature list from a selection dir or its ``selected_features.json`` (for training)."""
    from clinrisk.io import read_json

    p = Path(path)
    if p.is_dir():
        p = p / SELECTION_FILE
    doc = read_json(p)
    sel = doc.get("selected") if isinstance(doc, dict) else None
    if not isinstance(sel, list) or not all(isinstance(s, str) for s in sel) or not sel:
        raise DataError(f"{p}: 'selected' must be a non-empty list of feature names")
    return sel


def features_for_training(path: Path, apply: str = "if_non_inferior") -> list[str] | None:
    """The feature list training should use: the selection if it passed its own non-inferiority check
    (docs/science.md §5.3: ΔAP ≥ −0.005 and ΔBrier ≤ +0.0005 vs the full set on validation), else ``None`` (all
    features). A selection that loses accuracy must not silently degrade the deployed model.
    ``apply="always"`` uses the selection regardless (``select.apply``, for experiments)."""
    from clinrisk.io import read_json

    if apply not in ("if_non_inferior", "always"):
        raise ConfigError(f"select.apply: {apply!r} is not one of if_non_inferior, always")
    p = Path(path)
    doc = read_json(p / SELECTION_FILE if p.is_dir() else p)
    selected = load_selected_features(p)
    evaluation = doc.get("evaluation") if isinstance(doc, dict) else None
    if apply == "if_non_inferior" and isinstance(evaluation, dict) and evaluation.get("acceptable") is False:
        return None
    return selected


def summary_metrics(doc: dict[str, Any]) -> dict[str, float]:
    """Flat numeric measurements of a selection document (for KFP Metrics / MLflow)."""
    out: dict[str, float] = {
        "n_features_before": float(doc["n_features_before"]),
        "n_features_after_filters": float(doc["n_features_after_filters"]),
        "n_features_selected": float(doc["n_features_selected"]),
        "peak_rss_mb": float(doc["resources"]["peak_rss_mb"]),
        "wall_s": float(doc["resources"]["wall_s"]),
    }
    if "sample" in doc:
        out["sample_rows"] = float(doc["sample"]["rows"])
    if "stability" in doc:
        out["stability_jaccard"] = float(doc["stability"]["mean_pairwise_jaccard"])
    ev = doc.get("evaluation", {})
    for k in ("delta_ap", "delta_brier"):
        if k in ev:
            out[k] = float(ev[k])
    q = doc.get("quality", {})
    for k in ("hazard_family_recall", "probe_false_selection_rate", "noise_false_selection_rate"):
        if q.get(k) is not None:
            out[k] = float(q[k])
    return out
