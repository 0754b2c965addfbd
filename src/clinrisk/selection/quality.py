"""Measuring a selection (step 4): selected vs full set on validation, hazard-family recall, false
selections of probes and noise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig
from clinrisk.selection.sampling import Sample
from clinrisk.selection.scores import weighted_ap, weighted_brier
from clinrisk.selection.stability import shallow_params

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
_ACCEPT_DELTA_AP = -0.005  # docs/science.md §5.3 acceptance
_ACCEPT_DELTA_BRIER = 0.0005


# ------------------------------------------------------------------------------------------- helpers


def family_members(names: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """Names equal to a prefix or starting with ``prefix_``."""
    return [n for n in names if any(n == p or n.startswith(p + "_") for p in prefixes)]


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
