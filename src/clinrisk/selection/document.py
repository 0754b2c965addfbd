"""The selection document: the selection stage's core (:func:`selection_document`), its publication, and
reading it back for training (:func:`features_for_training`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clinrisk.errors import ConfigError, DataError

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig
    from clinrisk.feature_table import FeatureSpec
from clinrisk.selection.filters import cheap_filters
from clinrisk.selection.quality import quick_compare, selection_quality
from clinrisk.selection.sampling import (
    bytes_per_row,
    draw_sample,
    load_inputs,
    peak_rss_mb,
    plan_sample_rows,
    rss_mb,
    rss_reset,
)
from clinrisk.selection.stability import stability_selection

SELECTION_FILE = "selected_features.json"
SELECTION_VERSION = 1


# ------------------------------------------------------------------------------------------- the step


def select_features(cfg: ClinriskConfig, features_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Run feature selection on ``features_dir`` and publish ``out_dir/selected_features.json`` atomically.

    Returns the JSON document. Deterministic given the config (``run.seed``) and the data. (The pipeline
    stage is :func:`clinrisk.stages.select.run`; this is the same for callers holding two paths.)
    """
    spec, shards = load_inputs(Path(features_dir))
    doc = selection_document(cfg, spec, shards, str(features_dir))
    publish_selection(doc, Path(out_dir))
    return doc


def selection_document(
    cfg: ClinriskConfig, spec: FeatureSpec, shards: list[Path], source: str
) -> dict[str, Any]:
    """The selection document of a features dataset (``spec`` + its checked ``shards``, named ``source``
    in the document); the core of the select stage: it reads bounded samples of the shards, writes nothing.
    """
    from clinrisk.feature_table import categorical_features

    t0 = time.perf_counter()
    rss_method = rss_reset()
    rss_start = rss_mb("VmRSS")
    sc = cfg.select
    seed = int(cfg.run.seed)
    names = list(spec.feature_names)
    categorical = set(categorical_features(spec))
    doc: dict[str, Any] = {
        "version": SELECTION_VERSION,
        "enabled": sc.enabled,
        "seed": seed,
        "config": sc.model_dump(mode="json"),
        "features_dir": source,
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
    return doc


def publish_selection(doc: dict[str, Any], out_dir: Path) -> None:
    """Write ``out_dir/selected_features.json`` atomically (a failed run leaves no half folder)."""
    from clinrisk.io import atomic_output_dir, write_json

    with atomic_output_dir(Path(out_dir)) as tmp:
        write_json(tmp / SELECTION_FILE, doc)


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
