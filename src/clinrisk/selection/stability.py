"""Stability selection with probes (step 3): shallow LightGBM rounds on patient subsamples against
matched probe bars."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig
from clinrisk.selection.sampling import F32, F64, I64, Sample

PROBE_PREFIX = "__probe_"
HELDOUT_PREFIX = "__heldout_probe_"


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
