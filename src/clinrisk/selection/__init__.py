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

Modules by job: :mod:`.sampling` (1), :mod:`.filters` (2), :mod:`.stability` (3), :mod:`.quality` (4),
:mod:`.scores` (the weighted scores they share) and :mod:`.document` (the selection document, the stage's
core). Their public names are importable from here.
"""

from __future__ import annotations

from clinrisk.selection.document import (
    SELECTION_FILE,
    SELECTION_VERSION,
    features_for_training,
    load_selected_features,
    publish_selection,
    select_features,
    selection_document,
    summary_metrics,
)
from clinrisk.selection.filters import (
    FilterResult,
    cheap_filters,
    pairwise_spearman,
)
from clinrisk.selection.quality import (
    HAZARD_FAMILIES,
    NOISE_PREFIXES,
    family_members,
    quick_compare,
    selection_quality,
)
from clinrisk.selection.sampling import (
    F32,
    F64,
    I64,
    Sample,
    bytes_per_row,
    choose_patients,
    draw_sample,
    load_inputs,
    peak_rss_mb,
    plan_sample_rows,
    read_sample,
    rss_mb,
    rss_reset,
    stable_hash,
)
from clinrisk.selection.scores import (
    binned_ap,
    weighted_ap,
    weighted_brier,
)
from clinrisk.selection.stability import (
    HELDOUT_PREFIX,
    PROBE_PREFIX,
    available_cores,
    make_probes,
    matched_threshold,
    n_distinct,
    probe_sources,
    shallow_params,
    stability_selection,
)

__all__ = [
    "F32",
    "F64",
    "HAZARD_FAMILIES",
    "HELDOUT_PREFIX",
    "I64",
    "NOISE_PREFIXES",
    "PROBE_PREFIX",
    "SELECTION_FILE",
    "SELECTION_VERSION",
    "FilterResult",
    "Sample",
    "available_cores",
    "binned_ap",
    "bytes_per_row",
    "cheap_filters",
    "choose_patients",
    "draw_sample",
    "family_members",
    "features_for_training",
    "load_inputs",
    "load_selected_features",
    "make_probes",
    "matched_threshold",
    "n_distinct",
    "pairwise_spearman",
    "peak_rss_mb",
    "plan_sample_rows",
    "probe_sources",
    "publish_selection",
    "quick_compare",
    "read_sample",
    "rss_mb",
    "rss_reset",
    "select_features",
    "selection_document",
    "selection_quality",
    "shallow_params",
    "stability_selection",
    "stable_hash",
    "summary_metrics",
    "weighted_ap",
    "weighted_brier",
]
