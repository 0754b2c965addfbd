"""Evaluation orchestration (docs/science.md §1.9, §2.4, §4.3, §7): test-split metrics against recorded AND true
labels with patient-cluster bootstrap CIs, oracle ceilings, slices, error analysis, KFP curve data, report.

Layers: :func:`load_test_frame` reads the features dataset (:func:`score_split` reads and scores it one
shard at a time, keeping no model features); :func:`evaluate_predictions` is pure (frame + probabilities
in, JSON-able dict out); :func:`evaluate_model` loads the bundle, scores, adds SHAP for the listed errors
and publishes ``metrics.json``, ``report.md``, ``plots/*.png`` and ``predictions.parquet``
atomically.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
from threadpoolctl import threadpool_limits

from clinrisk import metrics as M
from clinrisk.config import ClinriskConfig, EvaluateConfig
from clinrisk.errors import DataError
from clinrisk.evaluate_bootstrap import (
    BLAS_THREADS,
    BootstrapData,
    BootstrapJob,
    BootstrapPool,
    CountSumsJob,
    Replicates,
)
from clinrisk.io import atomic_output_dir, check_feature_shards, json_safe, read_json, write_json

LABELS = {"recorded": "label_rec", "true": "eval_label_true"}
REQUIRED = ("patient_id", "year", "split", "label_rec", "eval_label_true", "eval_oracle_risk")
EVAL_COLUMNS = (
    "eval_label_true",
    "eval_oracle_risk",
    "eval_onset_year",
    "eval_recorded_year",
    "eval_undiagnosed",
)
SLICE_METRICS = ("auc", "ap", "ap_lift", "oe", "cal_slope", "sensitivity", "ppv", "alert_rate", "net_benefit")
SLICE_PANEL = ("prevalence", *SLICE_METRICS)  # what a slice's bootstrap computes (metric_panel's ``only``)
# The oracle p^A scored against the true labels: the ceiling the report shows beside the model.
ORACLE_PANEL = ("auc", "ap", "brier", "net_benefit")
# Column-name patterns used when EvaluateConfig.error_columns does not name the feature for a role.
ERROR_ROLE_PATTERNS: dict[str, tuple[str, ...]] = {
    "hba1c_count": (r"^hba1c_n_\d+y$", r"^hba1c_(n|count)_?\d*y?$"),
    "hba1c_years_since": (r"^hba1c_years_since(_last)?$", r"^years_since(_last)?_hba1c$"),
    "visits": (r"^visits$", r"^visits_sum_\d+y$"),
    "bmi": (r"^bmi_locf$", r"^bmi_last_\d+y$", r"^bmi$"),
}
ContribFn = Callable[[pl.DataFrame], tuple[npt.NDArray[np.float64], list[str]]]
RowsFn = Callable[[npt.NDArray[np.intp]], pl.DataFrame]  # rows of the evaluated frame by position


# ------------------------------------------------------------------------------------------------ input


def load_test_frame(
    features_dir: Path, split: str = "test", keep: Callable[[list[str]], list[str]] | None = None
) -> pl.DataFrame:
    """Rows of ``split`` from every feature shard; missing label/eval columns are a DataError naming them.

    ``keep`` picks the columns to read from the dataset's column names (e.g. :func:`evaluation_columns`);
    the others are never read (the scan pushes the projection and the split filter into the Parquet reader).
    """
    shards = check_feature_shards(Path(features_dir))  # whole Parquet, typed as the spec says
    lf = pl.scan_parquet([str(s) for s in shards])
    names = _dataset_columns(Path(features_dir), lf)
    if keep is not None:
        chosen = set(keep(names)) | set(REQUIRED)
        lf = lf.select([c for c in names if c in chosen])
    df = lf.filter(pl.col("split").cast(pl.String) == split).collect()
    return _checked_split(Path(features_dir), df, split)


def _dataset_columns(features_dir: Path, lf: pl.LazyFrame) -> list[str]:
    names = lf.collect_schema().names()
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise DataError(f"{features_dir}: features dataset lacks column(s) {missing}")
    return names


def _checked_split(features_dir: Path, df: pl.DataFrame, split: str) -> pl.DataFrame:
    if df.height == 0:
        raise DataError(f"{features_dir}: no rows with split == {split!r}")
    for c in ("label_rec", "eval_label_true", "eval_oracle_risk"):
        if df[c].null_count():
            raise DataError(
                f"{features_dir}: column {c} has {df[c].null_count()} null values in {split} rows"
            )
    return df


@dataclass(frozen=True)
class ScoredSplit:
    """A split scored one feature shard at a time (:func:`score_split`): ``frame`` holds what evaluation
    uses besides scoring, ``p`` the probabilities, and :meth:`rows` reads rows back with the model's
    features (the SHAP of the listed errors needs a few of them)."""

    frame: pl.DataFrame
    p: npt.NDArray[np.float64]
    shards: tuple[Path, ...]
    columns: tuple[str, ...]  # what a shard read holds: the frame's columns and the model's features
    split: str
    starts: tuple[int, ...]  # the frame's first row of each shard, and its height last

    def read_shard(self, i: int) -> pl.DataFrame:
        return _read_split(self.shards[i], list(self.columns), self.split)

    def rows(self, idx: npt.NDArray[np.intp]) -> pl.DataFrame:
        """The rows at positions ``idx`` of ``frame``, in that order, with every column a shard read holds."""
        idx = np.asarray(idx, dtype=np.int64)
        shard_of = np.searchsorted(np.asarray(self.starts), idx, side="right") - 1
        parts, order = [], []
        for i in np.unique(shard_of):
            at = np.flatnonzero(shard_of == i)
            parts.append(self.read_shard(int(i))[idx[at] - self.starts[int(i)]])
            order.append(at)
        if not parts:
            return self.read_shard(0).clear()
        got = pl.concat(parts, how="vertical")
        return got[np.argsort(np.concatenate(order), kind="stable")]


def _read_split(shard: Path, columns: list[str], split: str) -> pl.DataFrame:
    return (
        pl.scan_parquet(str(shard)).select(columns).filter(pl.col("split").cast(pl.String) == split).collect()
    )


def score_split(features_dir: Path, bundle: Any, cfg: EvaluateConfig, split: str = "test") -> ScoredSplit:
    """Score ``split`` of a features dataset one shard at a time and keep, of each shard, only what
    evaluation uses besides scoring: :func:`evaluation_columns` without the model's features (those a
    slice or an error-analysis role names stay). The model's features of the whole split are never held
    at once; they were most of the step's memory that grew with rows. ``frame`` and ``p`` equal
    :func:`load_test_frame` + :func:`predict_in_batches` without those columns (tested)."""
    features_dir = Path(features_dir)
    shards = check_feature_shards(features_dir)  # whole Parquet, typed as the spec says
    names = _dataset_columns(features_dir, pl.scan_parquet([str(s) for s in shards]))
    read = {*evaluation_columns(cfg, bundle.feature_names)(names), *REQUIRED}
    kept = {*evaluation_columns(cfg, ())(names), *REQUIRED}
    columns = [c for c in names if c in read]
    frames: list[pl.DataFrame] = []
    probs: list[npt.NDArray[np.float64]] = []
    starts = [0]
    for shard in shards:
        part = _read_split(shard, columns, split)
        probs.append(predict_in_batches(bundle, part))
        frames.append(part.select([c for c in columns if c in kept]))
        starts.append(starts[-1] + part.height)
        del part
    df = _checked_split(features_dir, pl.concat(frames, how="vertical"), split)
    return ScoredSplit(
        frame=df,
        p=np.concatenate(probs),
        shards=tuple(shards),
        columns=tuple(columns),
        split=split,
        starts=tuple(starts),
    )


def evaluation_columns(
    cfg: EvaluateConfig, model_features: Sequence[str]
) -> Callable[[list[str]], list[str]]:
    """What evaluation reads of a features dataset (a ``keep`` for :func:`load_test_frame`): ids, labels,
    ``eval_*``, slice and error-analysis columns (the configured ones and every column a role pattern could
    pick, so detection is unchanged) and the model's features (scoring, SHAP of the listed errors). The
    dataset's other feature columns (those selection dropped) are not loaded."""
    want = {*REQUIRED, *EVAL_COLUMNS, *cfg.slice_columns, "age", *model_features, *cfg.error_columns.values()}
    patterns = [re.compile(p) for ps in ERROR_ROLE_PATTERNS.values() for p in ps]

    def keep(names: list[str]) -> list[str]:
        return [c for c in names if c in want or any(p.search(c) for p in patterns)]

    return keep


def dataset_categories(features_dir: Path) -> dict[str, list[str]]:
    """The categorical levels the features dataset's frozen spec lists ({} without a spec)."""
    spec = Path(features_dir) / "feature_spec.json"
    if not spec.is_file():
        return {}
    cats = read_json(spec).get("categories", {}) or {}
    return {str(k): [str(x) for x in v] for k, v in cats.items()}


def slice_values(
    df: pl.DataFrame, column: str, cfg: EvaluateConfig, categories: dict[str, list[str]] | None = None
) -> npt.NDArray[np.str_] | None:
    """String level per row for a slice; integer-coded categoricals are decoded via the feature spec.

    ``age_band`` is derived from ``age`` with ``cfg.age_band_edges``. None when the column is absent.
    """
    categories = categories or {}
    if column == "age_band":
        if "age" not in df.columns:
            return None
        a, b = cfg.age_band_edges
        age = df["age"].cast(pl.Float64).to_numpy()
        out = np.where(age < a, f"<{a}", np.where(age < b, f"{a}-{b - 1}", f">={b}"))
        return np.where(np.isnan(age), "missing", out)
    if column not in df.columns:
        return None
    s = df[column]
    if s.dtype.is_integer() and column in categories:
        levels = categories[column]
        codes = s.fill_null(-1).to_numpy()
        lut = np.array([*levels, "missing"], dtype=object)
        return np.asarray(lut[np.where((codes >= 0) & (codes < len(levels)), codes, len(levels))], dtype=str)
    return np.asarray(s.cast(pl.String).fill_null("missing").to_numpy(), dtype=str)


def _band_key(level: str) -> tuple[int, float, str]:
    """Order bands numerically by their first number ("<25" < "25-29.9" < ">=35"); text after numbers."""
    m = re.search(r"\d+(\.\d+)?", level)
    if m is None:
        return (1, 0.0, level)
    bump = -0.5 if level.startswith("<") else (0.5 if level.startswith(">") else 0.0)
    return (0, float(m.group()) + bump, level)


def _ordered_levels(values: npt.NDArray[np.str_]) -> list[str]:
    return sorted(set(values.tolist()), key=_band_key)


def _detect(df: pl.DataFrame, role: str, cfg: EvaluateConfig) -> str | None:
    if role in cfg.error_columns:
        name = cfg.error_columns[role]
        if name not in df.columns:
            raise DataError(f"evaluate.error_columns.{role}: column {name!r} not in the features dataset")
        return name
    for pat in ERROR_ROLE_PATTERNS[role]:
        for c in df.columns:
            if re.search(pat, c) and not c.startswith("eval_"):
                return c
    return None


def _num(df: pl.DataFrame, col: str) -> npt.NDArray[np.float64]:
    return np.asarray(df[col].cast(pl.Float64).fill_null(float("nan")).to_numpy(), dtype=np.float64)


# ------------------------------------------------------------------------------------------- bands (§7)


def error_bands(df: pl.DataFrame, cfg: EvaluateConfig, window_years: int | None = None) -> dict[str, Any]:
    """Per error-analysis dimension, a string band per row; returns ``{dimension: (column, bands)}``."""
    out: dict[str, Any] = {}
    cnt = _detect(df, "hba1c_count", cfg)
    ys = _detect(df, "hba1c_years_since", cfg)
    if cnt is not None:
        v = _num(df, cnt)
        out["hba1c_in_window"] = (cnt, np.where(np.nan_to_num(v) > 0, "yes", "no"))
    elif ys is not None and window_years is not None:
        v = _num(df, ys)
        out["hba1c_in_window"] = (ys, np.where(np.isfinite(v) & (v <= window_years), "yes", "no"))
    if ys is not None:
        v = _num(df, ys)
        band = np.select([~np.isfinite(v), v < 1, v < 2, v < 3], ["never", "0", "1", "2"], "3+")
        out["years_since_last_hba1c"] = (ys, band)
    vis = _detect(df, "visits", cfg)
    if vis is not None:
        v = _num(df, vis)
        band = np.select([~np.isfinite(v), v < 1, v < 3, v < 6], ["missing", "0", "1-2", "3-5"], "6+")
        out["visits"] = (vis, band)
    bmi = _detect(df, "bmi", cfg)
    if bmi is not None:
        v = _num(df, bmi)
        band = np.select(
            [~np.isfinite(v), v < 25, v < 30, v < 35], ["missing", "<25", "25-29.9", "30-34.9"], ">=35"
        )
        out["bmi"] = (bmi, band)
    if "eval_undiagnosed" in df.columns:
        u = df["eval_undiagnosed"].cast(pl.Boolean).fill_null(False).to_numpy()
        out["undiagnosed_prevalent"] = ("eval_undiagnosed", np.where(u, "yes", "no"))
    return out


def error_crosstab(
    bands: npt.NDArray[np.str_],
    alert: npt.NDArray[np.bool_],
    y_rec: npt.NDArray[Any],
    y_true: npt.NDArray[Any],
) -> list[dict[str, Any]]:
    """FN/FP counts at τ per band, against both label sets, with each band's share of all FNs/FPs and of
    all positives (a band "dominates" FNs when its FN share far exceeds its positive share)."""
    rows: list[dict[str, Any]] = []
    tot: dict[str, float] = {}
    for lab, y in (("rec", y_rec), ("true", y_true)):
        tot[f"fn_{lab}"] = float(np.sum((y == 1) & ~alert))
        tot[f"fp_{lab}"] = float(np.sum((y == 0) & alert))
        tot[f"pos_{lab}"] = float(np.sum(y == 1))
    for level in _ordered_levels(bands):
        m = bands == level
        r: dict[str, Any] = {"band": level, "n_rows": int(m.sum()), "alert_rate": float(alert[m].mean())}
        for lab, y in (("rec", y_rec), ("true", y_true)):
            pos = (y == 1) & m
            fn = int(np.sum(pos & ~alert))
            fp = int(np.sum((y == 0) & m & alert))
            r[f"positives_{lab}"] = int(pos.sum())
            r[f"fn_{lab}"] = fn
            r[f"fp_{lab}"] = fp
            r[f"fn_rate_{lab}"] = fn / int(pos.sum()) if pos.sum() else float("nan")
            r[f"fn_share_{lab}"] = fn / tot[f"fn_{lab}"] if tot[f"fn_{lab}"] else float("nan")
            r[f"fp_share_{lab}"] = fp / tot[f"fp_{lab}"] if tot[f"fp_{lab}"] else float("nan")
            r[f"positive_share_{lab}"] = (
                int(pos.sum()) / tot[f"pos_{lab}"] if tot[f"pos_{lab}"] else float("nan")
            )
        rows.append(r)
    return rows


def fp_decomposition(
    alert: npt.NDArray[np.bool_], y_rec: npt.NDArray[Any], y_true: npt.NDArray[Any]
) -> dict[str, Any]:
    """Recorded-label false positives split into label-noise FPs (Y_true = 1, coded later) and real FPs."""
    fp = alert & (y_rec == 0)
    noise = fp & (y_true == 1)
    n_fp = int(fp.sum())
    return {
        "fp_recorded": n_fp,
        "label_noise_fp": int(noise.sum()),
        "real_fp": int(n_fp - noise.sum()),
        "label_noise_share": float(noise.sum() / n_fp) if n_fp else float("nan"),
        "fn_recorded": int(np.sum(~alert & (y_rec == 1))),
        "fn_true": int(np.sum(~alert & (y_true == 1))),
    }


# ---------------------------------------------------------------------------------------- slices (§7)


def _flag(s: dict[str, Any], cfg: EvaluateConfig) -> list[str]:
    """Absolute flags: O/E outside ``slice_oe_bounds`` with a CI excluding 1; ΔAUC beyond ``slice_auc_delta``
    with a paired CI excluding 0 (never relative to an overall O/E that may itself be off)."""
    reasons: list[str] = []
    d = s.get("auc_diff")
    if (
        d is not None
        and _finite(d["value"], d["lo"], d["hi"])
        and abs(d["value"]) > cfg.slice_auc_delta
        and not (d["lo"] <= 0.0 <= d["hi"])
    ):
        reasons.append(
            f"AUC {s['auc']['value']:.3f}, Δ vs overall {d['value']:+.3f} "
            f"[{d['lo']:+.3f}, {d['hi']:+.3f}] (|Δ| > {cfg.slice_auc_delta:g})"
        )
    oe = s["oe"]
    lo, hi = cfg.slice_oe_bounds
    if (
        _finite(oe["value"], oe["lo"], oe["hi"])
        and not (lo <= oe["value"] <= hi)
        and not (oe["lo"] <= 1.0 <= oe["hi"])
    ):
        reasons.append(f"O/E {oe['value']:.2f} [{oe['lo']:.2f}, {oe['hi']:.2f}] outside [{lo:g}, {hi:g}]")
    return reasons


def _finite(*xs: float) -> bool:
    return all(x is not None and math.isfinite(x) for x in xs)


SliceMask = tuple[str, str, npt.NDArray[np.bool_]]


def plan_slices(
    df: pl.DataFrame, cfg: EvaluateConfig, categories: dict[str, list[str]] | None = None
) -> tuple[list[SliceMask], list[dict[str, Any]]]:
    """Slice levels to analyse, and the ones dropped with why: empty, or the same rows as an earlier slice
    (``insurance=medicare`` is exactly ``age_band>=65`` when Medicare starts at 65)."""
    kept: list[SliceMask] = []
    dropped: list[dict[str, Any]] = []
    seen: dict[bytes, str] = {}
    for col in cfg.slice_columns:
        vals = slice_values(df, col, cfg, categories)
        if vals is None:
            continue
        for level in _ordered_levels(vals):
            m = vals == level
            name = f"{col}={level}"
            if not m.any():
                dropped.append({"slice": col, "level": level, "reason": "no rows"})
                continue
            key = np.packbits(m).tobytes()
            if key in seen:
                dropped.append({"slice": col, "level": level, "reason": f"same rows as {seen[key]}"})
                continue
            seen[key] = name
            kept.append((col, level, m))
    return kept, dropped


def slice_jobs(plan: list[SliceMask], ys: dict[str, npt.NDArray[np.float64]]) -> list[BootstrapJob]:
    """The slices' bootstraps, in the order :func:`slice_analysis` reads them: per slice level, per label
    set with both classes in it (a one-class slice gets sizes only; its ranking metrics are undefined).
    A job's ``rows`` is its slice's index in ``plan`` (:func:`slice_row_sets`)."""
    return [
        BootstrapJob(name, rows=i, only=SLICE_PANEL)
        for i, (_, _, m) in enumerate(plan)
        for name, y_all in ys.items()
        if y_all[m].min() != y_all[m].max()
    ]


def slice_row_sets(
    plan: list[SliceMask], order: npt.NDArray[np.int64] | None = None
) -> tuple[npt.NDArray[np.uint8], ...]:
    """Each slice's rows as a bit mask (:func:`numpy.packbits`: an eighth of a boolean mask), over the rows
    in ``order`` (the bootstraps read them sorted by score)."""
    return tuple(np.packbits(m if order is None else m[order]) for _, _, m in plan)


def slice_analysis(
    plan: list[SliceMask],
    boots: Sequence[Replicates],
    ys: dict[str, npt.NDArray[np.float64]],
    codes: npt.NDArray[np.int64],
    overall_auc: dict[str, tuple[float, npt.NDArray[np.float64]]],
    cfg: EvaluateConfig,
    *,
    patient_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Per slice level of ``plan``: sizes, prevalences, bootstrap metrics vs both label sets, the AUC
    difference to the whole test set with a paired bootstrap CI, and absolute flags (docs/science.md §7).

    ``boots``: the results of :func:`slice_jobs` (same order). ``overall_auc``: per label set, the whole
    test set's AUC and its replicates under the same resamples (absent for a label set with one class)."""
    alpha = 1 - cfg.ci_level
    boot_iter = iter(boots)
    out: list[dict[str, Any]] = []
    for col, level, m in plan:
        entry: dict[str, Any] = {
            "slice": col,
            "level": level,
            "n_rows": int(m.sum()),
            "n_patients": int(np.unique(codes[m]).size),
        }
        flags: list[str] = []
        for name, y_all in ys.items():
            y = y_all[m]
            if y.min() == y.max():  # one class only: ranking metrics undefined, still report sizes
                entry[name] = {"prevalence": {"value": float(y.mean())}}
                continue
            point, reps = next(boot_iter)
            panel = {k: M.percentile_ci(point[k], reps[k], alpha) for k in ("prevalence", *SLICE_METRICS)}
            if name in overall_auc:
                o_pt, o_reps = overall_auc[name]
                panel["auc_diff"] = M.percentile_ci(point["auc"] - o_pt, reps["auc"] - o_reps, alpha)
            entry[name] = panel
            flags += [f"{name} labels: {r}" for r in _flag(panel, cfg)]
        if patient_kwargs is not None:
            pk: dict[str, Any] = {
                k: (v[m] if isinstance(v, np.ndarray) else v) for k, v in patient_kwargs.items()
            }
            pl_m = M.patient_level_metrics(**pk)
            k_max = max(cfg.patient_k_years)
            entry["patient_sensitivity"] = pl_m[f"sensitivity_{k_max}"]["value"]
            entry["median_lead_time"] = pl_m["lead_time"]["median"]
        entry["flags"] = flags
        entry["flagged"] = bool(flags)
        out.append(entry)
    return out


def blind_spot(slices: list[dict[str, Any]], column: str = "insurance") -> list[dict[str, Any]]:
    """The label-noise blind spot (§7): O/E vs true against O/E vs recorded per level of ``column``."""
    rows = []
    for s in slices:
        if s["slice"] != column or "oe" not in s.get("true", {}) or "oe" not in s.get("recorded", {}):
            continue
        oe_t, oe_r = s["true"]["oe"]["value"], s["recorded"]["oe"]["value"]
        rows.append(
            {
                "level": s["level"],
                "prevalence_true": s["true"]["prevalence"]["value"],
                "prevalence_recorded": s["recorded"]["prevalence"]["value"],
                "oe_true": oe_t,
                "oe_true_ci": [s["true"]["oe"]["lo"], s["true"]["oe"]["hi"]],
                "oe_recorded": oe_r,
                "oe_recorded_ci": [s["recorded"]["oe"]["lo"], s["recorded"]["oe"]["hi"]],
                "gap": oe_t - oe_r,
            }
        )
    return rows


# --------------------------------------------------------------------------------------- top errors


def top_errors(
    df: pl.DataFrame,
    p: npt.NDArray[np.float64],
    alert: npt.NDArray[np.bool_],
    k: int,
    n_contrib: int,
    contrib: ContribFn | None,
    rows_of: RowsFn | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Top-k highest-risk FPs and lowest-risk FNs (vs recorded labels), each with Y_true/undiagnosed and
    its largest |SHAP| contributions (``contrib`` returns (rows × features[+bias]) values and names of the
    rows ``rows_of`` gives for their positions; default ``df``'s own rows)."""
    y_rec = df["label_rec"].cast(pl.Int64).to_numpy()
    out: dict[str, list[dict[str, Any]]] = {}
    fp_idx = np.flatnonzero(alert & (y_rec == 0))
    fn_idx = np.flatnonzero(~alert & (y_rec == 1))
    picks = {
        "false_positives": fp_idx[np.argsort(-p[fp_idx], kind="mergesort")][:k],
        "false_negatives": fn_idx[np.argsort(p[fn_idx], kind="mergesort")][:k],
    }
    for name, idx in picks.items():
        rows: list[dict[str, Any]] = []
        vals: npt.NDArray[np.float64] | None = None
        names: list[str] = []
        if contrib is not None and idx.size:
            vals, names = contrib(rows_of(idx) if rows_of is not None else df[idx])
        for j, i in enumerate(idx):
            r: dict[str, Any] = {
                "patient_id": int(df["patient_id"][int(i)]),
                "year": int(df["year"][int(i)]),
                "probability": float(p[i]),
                "label_rec": int(y_rec[i]),
                "eval_label_true": int(df["eval_label_true"][int(i)]),
            }
            if "eval_undiagnosed" in df.columns:
                r["eval_undiagnosed"] = bool(df["eval_undiagnosed"][int(i)])
            if vals is not None:
                row = vals[j, : len(names)]
                top = np.argsort(-np.abs(row), kind="mergesort")[:n_contrib]
                r["top_contributions"] = [{"feature": names[t], "shap": float(row[t])} for t in top]
            rows.append(r)
        out[name] = rows
    return out


# ------------------------------------------------------------------------------------- the evaluation


def evaluate_predictions(
    cfg: EvaluateConfig,
    df: pl.DataFrame,
    p: npt.NDArray[np.float64],
    *,
    tau: float,
    p_t: float,
    seed: int = 0,
    categories: dict[str, list[str]] | None = None,
    window_years: int | None = None,
    contrib: ContribFn | None = None,
    rows_of: RowsFn | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Every number of the evaluation for test rows ``df`` scored ``p`` (pure; JSON-able result).
    ``rows_of`` gives the rows whose SHAP values the listed errors show, when ``df`` lacks the model's
    features (:class:`ScoredSplit`). ``workers``: processes for the bootstraps (this one included; the
    result is the same for any number)."""
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (df.height,):
        raise DataError(f"probability: expected {df.height} values, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise DataError("probability: model returned values outside [0, 1] or NaN")
    codes, n_pat = M.patient_codes(df["patient_id"].to_numpy())
    n_boot = cfg.bootstrap_replicates
    po = df["eval_oracle_risk"].cast(pl.Float64).to_numpy()
    ys = {k: df[c].cast(pl.Float64).to_numpy() for k, c in LABELS.items()}
    for k, y in ys.items():
        if not np.isin(y, (0.0, 1.0)).all():
            raise DataError(f"{LABELS[k]}: labels must be 0/1")
    patient_kwargs = patient_level_inputs(df, p, ys["true"], tau, cfg)
    # The patient-level CIs resample the same patients as every other bootstrap: their sums are one
    # more job on the same streamed resamples (drawing them again took 6.5 s at 20M raw rows).
    level = None if patient_kwargs is None else M.patient_level_point(**patient_kwargs)
    del patient_kwargs  # rebuilt after the bootstraps: not held beside them

    # One batch of bootstraps: per label set the model's full panel with the oracle's metrics, the
    # oracle's own panel, every slice's, then the patient-level sums (one batch balances the processes
    # best). The workers end with the batch; BLAS stays on one thread for the whole evaluation. The
    # bootstraps read the rows sorted by descending score, so no job copies them to sort them (at 20M raw
    # rows that was ~55 MB per job in each process); the row-order arrays are rebuilt from ``df`` for
    # what follows.
    with threadpool_limits(BLAS_THREADS, user_api="blas"):
        plan, dropped = plan_slices(df, cfg, categories)
        order = M.descending_order(p)
        jobs: list[BootstrapJob | CountSumsJob] = [BootstrapJob(name, with_oracle=True) for name in ys]
        jobs.append(BootstrapJob("true", only=ORACLE_PANEL, oracle_scores=True))
        jobs += slice_jobs(plan, ys)
        if level is not None:
            jobs.append(CountSumsJob(level.members))
        # The slices' row-order masks wait packed (an eighth of the bytes) until their analysis.
        packed_plan = [(col, lvl, np.packbits(m)) for col, lvl, m in plan]
        data = BootstrapData(
            ys={k: y[order] for k, y in ys.items()},
            p=p[order],
            p_oracle=po[order],
            codes=codes[order],
            row_sets=slice_row_sets(plan, order),
            n_patients=n_pat,
            n_boot=n_boot,
            seed=seed,
            tau=tau,
            p_t=p_t,
        )
        del order, ys, po, codes, plan
        with BootstrapPool(data, workers) as pool:
            del data
            boots = pool.run(jobs)
        del jobs, pool
        plan = [(col, lvl, np.unpackbits(b, count=df.height).view(np.bool_)) for col, lvl, b in packed_plan]
        patient_level = None
        if level is not None:
            patient_level = M.patient_level_cis(level, boots.pop()[1]["sums"], 1 - cfg.ci_level)
        codes, _ = M.patient_codes(df["patient_id"].to_numpy())
        ys = {k: df[c].cast(pl.Float64).to_numpy() for k, c in LABELS.items()}
        po = df["eval_oracle_risk"].cast(pl.Float64).to_numpy()
        rows = BootstrapData(
            ys=ys,
            p=p,
            p_oracle=po,
            codes=codes,
            row_sets=(),
            n_patients=n_pat,
            n_boot=n_boot,
            seed=seed,
            tau=tau,
            p_t=p_t,
        )
        return _evaluate_with(
            cfg,
            df,
            rows,
            boots,
            (plan, dropped),
            n_pat=n_pat,
            patient=(patient_level_inputs(df, p, ys["true"], tau, cfg), patient_level),
            window_years=window_years,
            contrib=contrib,
            rows_of=rows_of,
        )


def patient_level_inputs(
    df: pl.DataFrame,
    p: npt.NDArray[np.float64],
    label_true: npt.NDArray[np.float64],
    tau: float,
    cfg: EvaluateConfig,
) -> dict[str, Any] | None:
    """The row arrays :func:`clinrisk.metrics.patient_level_metrics` reads (None without onset columns)."""
    if not {"eval_onset_year", "eval_recorded_year"} <= set(df.columns):
        return None
    return {
        "patient_id": df["patient_id"].to_numpy(),
        "year": df["year"].cast(pl.Float64).to_numpy(),
        "p": p,
        "onset_year": _num(df, "eval_onset_year"),
        "recorded_year": _num(df, "eval_recorded_year"),
        "label_true": label_true,
        "tau": tau,
        "ks": tuple(cfg.patient_k_years),
    }


def _evaluate_with(
    cfg: EvaluateConfig,
    df: pl.DataFrame,
    data: BootstrapData,
    boots: list[Replicates],
    slices: tuple[list[SliceMask], list[dict[str, Any]]],
    *,
    n_pat: int,
    patient: tuple[dict[str, Any] | None, dict[str, Any] | None],
    window_years: int | None,
    contrib: ContribFn | None,
    rows_of: RowsFn | None,
) -> dict[str, Any]:
    """:func:`evaluate_predictions` once the bootstraps are done: ``boots`` holds, in order, each label
    set's full panel, the oracle's panel and the slices' (``slices``: the kept and the dropped levels);
    ``patient``: the patient-level inputs and their (whole test set) result, both None without onsets."""
    alpha = 1 - cfg.ci_level
    p, po, ys, tau, p_t = data.p, data.p_oracle, data.ys, data.tau, data.p_t
    plan, dropped = slices
    overall: dict[str, dict[str, dict[str, float]]] = {}
    overall_auc: dict[str, tuple[float, npt.NDArray[np.float64]]] = {}  # reused by the slices' AUC deltas
    model_boots, (o_point, o_reps), slice_boots = boots[: len(ys)], boots[len(ys)], boots[len(ys) + 1 :]
    for (name, y), (point, reps) in zip(ys.items(), model_boots, strict=True):
        overall[name] = {k: M.percentile_ci(point[k], reps[k], alpha) for k in point}
        if 0 < y.sum() < y.size:
            overall_auc[name] = (point["auc"], reps["auc"])
    oracle_panel = {k: M.percentile_ci(o_point[k], o_reps[k], alpha) for k in o_point}
    nb_lo, nb_hi = cfg.net_benefit_range
    result: dict[str, Any] = {
        "n_rows": df.height,
        "n_patients": n_pat,
        "years": sorted({int(v) for v in df["year"].unique().to_list()}),
        "tau": float(tau),
        "p_t": float(p_t),
        "ci_level": cfg.ci_level,
        "bootstrap_replicates": cfg.bootstrap_replicates,
        "overall": overall,
        "calibration": {name: {**M.ici(y, p), "curve": M.calibration_curve(y, p)} for name, y in ys.items()},
        "operating_point": {name: M.operating_point(y, p, tau) for name, y in ys.items()},
        "net_benefit_curve": {name: M.net_benefit_curve(y, p, lo=nb_lo, hi=nb_hi) for name, y in ys.items()},
        "oracle": {
            **M.oracle_summary(ys["true"], p, po),
            "true_label_panel": {k: oracle_panel[k] for k in ORACLE_PANEL},
            "net_benefit_curve": M.net_benefit_curve(ys["true"], np.clip(po, 0, 1), lo=nb_lo, hi=nb_hi),
        },
        "kfp": {
            name: {
                "roc": M.roc_points(y, p, cfg.max_curve_points),
                "confusion_matrix": M.confusion_matrix_at(y, p, tau),
            }
            for name, y in ys.items()
        },
        "pr_curve": {name: M.pr_points(y, p, cfg.max_curve_points) for name, y in ys.items()},
    }

    patient_kwargs, patient_level = patient
    if patient_level is not None:
        result["patient_level"] = patient_level

    result["slices_dropped"] = dropped
    result["slices"] = slice_analysis(
        plan, slice_boots, ys, data.codes, overall_auc, cfg, patient_kwargs=patient_kwargs
    )
    result["label_noise_blind_spot"] = blind_spot(result["slices"], "insurance")

    alert = p >= tau
    yr, yt = ys["recorded"], ys["true"]
    bands = error_bands(df, cfg, window_years)
    result["error_analysis"] = {
        "fp_decomposition": fp_decomposition(alert, yr, yt),
        "crosstabs": {
            dim: {"column": col, "rows": error_crosstab(b, alert, yr, yt)} for dim, (col, b) in bands.items()
        },
    }
    if cfg.top_k_fractions:
        result["top_k"] = top_k(df, p, cfg.top_k_fractions)
    result["top_errors"] = top_errors(df, p, alert, cfg.top_k_errors, cfg.top_contributions, contrib, rows_of)
    result["headline"] = headline(result)
    return result


def top_k(df: pl.DataFrame, p: npt.NDArray[np.float64], fractions: Sequence[float]) -> dict[str, Any]:
    """Lift and gains at each top-k capacity fraction, against recorded and true labels: the top
    ``ceil(f * n)`` rows of each period (``year``) are worked, counts pooled over periods; with the
    oracle risk, capture vs the oracle's lists (:func:`clinrisk.metrics.top_k_lift_gains`)."""
    scored = df.select("patient_id", "year", *LABELS.values(), "eval_oracle_risk").with_columns(
        pl.Series("_score", p, dtype=pl.Float64)
    )
    return {
        "pooling": "per-period lists, counts pooled over periods",
        **{
            name: M.top_k_lift_gains(
                scored,
                fractions,
                score="_score",
                label=col,
                group="year",
                entity="patient_id",
                truth="eval_oracle_risk",
            )
            for name, col in LABELS.items()
        },
    }


HEADLINE_METRICS = (
    "auc", "ap", "ap_lift", "brier", "oe", "cal_slope", "net_benefit", "sensitivity", "ppv", "alert_rate",
)  # fmt: skip


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The few numbers printed by the CLI and logged to MLflow as ``test_*``."""
    h: dict[str, float] = {}
    for name in LABELS:
        o = result["overall"][name]
        for k in HEADLINE_METRICS:
            h[f"{name}_{k}"] = o[k]["value"]
    h["expected_auc_model"] = result["oracle"]["expected_auc_model"]
    h["expected_auc_oracle"] = result["oracle"]["expected_auc_oracle"]
    h["auc_gap_expected"] = result["oracle"]["auc_gap_expected"]
    h["auc_gap_realised"] = result["oracle"]["auc_gap_realised"]
    h["excess_brier"] = result["oracle"]["excess_brier"]
    h["oracle_brier"] = result["oracle"]["oracle_brier"]
    h["label_noise_fp_share"] = result["error_analysis"]["fp_decomposition"]["label_noise_share"]
    h["n_flagged_slices"] = float(sum(s["flagged"] for s in result["slices"]))
    return h


def classification_metrics_data(result: dict[str, Any], labels: str = "recorded") -> dict[str, Any]:
    """What KFP's ClassificationMetrics needs: ROC points (fpr, tpr, thresholds; ≤ max_curve_points) and
    the confusion matrix at τ (``categories``, ``matrix`` rows = actual), for ``labels`` recorded|true."""
    if labels not in LABELS:
        raise DataError(f"labels: expected one of {sorted(LABELS)}, got {labels!r}")
    k = result["kfp"][labels]
    return {"roc": k["roc"], "confusion_matrix": k["confusion_matrix"]}


def write_outputs(
    result: dict[str, Any], df: pl.DataFrame, p: npt.NDArray[np.float64], out_dir: Path
) -> dict[str, Any]:
    """Publish metrics.json, report.md (+ report.html, self-contained), plots/*.png and predictions.parquet
    atomically into ``out_dir``."""
    from clinrisk.report import render_plots, render_report, write_report_html

    safe = json_safe(result)
    with atomic_output_dir(Path(out_dir)) as tmp:
        plots = render_plots(result, tmp / "plots")
        write_json(tmp / "metrics.json", safe)
        (tmp / "report.md").write_text(
            render_report(result, {k: f"plots/{v.name}" for k, v in plots.items()})
        )
        write_report_html(tmp / "report.md")  # images inlined: renders in MLflow's artefact viewer
        predictions_frame(df, p).write_parquet(tmp / "predictions.parquet", compression="zstd")
    return safe


def predictions_frame(df: pl.DataFrame, p: npt.NDArray[np.float64]) -> pl.DataFrame:
    """patient_id, year, probability, label_rec, eval_label_true — used by serving parity and experiments."""
    return pl.DataFrame(
        {
            "patient_id": df["patient_id"],
            "year": df["year"],
            "probability": pl.Series("probability", p, dtype=pl.Float64),
            "label_rec": df["label_rec"].cast(pl.Int8),
            "eval_label_true": df["eval_label_true"].cast(pl.Int8),
        }
    )


def _bundle_contrib(bundle: Any) -> ContribFn | None:
    """Adapt ``bundle.predict_contrib`` to (values, feature names); None if the bundle lacks it."""
    fn = getattr(bundle, "predict_contrib", None)
    if fn is None:
        return None

    def contrib(frame: pl.DataFrame) -> tuple[npt.NDArray[np.float64], list[str]]:
        raw = fn(frame)
        if isinstance(raw, pl.DataFrame):
            cols = [c for c in raw.columns if c not in ("bias", "expected_value", "__bias__")]
            return raw.select(cols).to_numpy().astype(np.float64), cols
        vals = np.asarray(raw, dtype=np.float64)
        names = list(_feature_names(bundle))
        return vals, names

    return contrib


def _feature_names(bundle: Any) -> Sequence[str]:
    names = getattr(bundle, "feature_names", None)
    if names is None:
        raise DataError("bundle: has no feature_names to label SHAP contributions")
    return list(names)


def evaluate_model(
    cfg: ClinriskConfig, bundle_dir: Path, features_dir: Path, out_dir: Path
) -> dict[str, Any]:
    """Score the test split with the bundle and publish the full evaluation into ``out_dir``. (The pipeline
    stage is :func:`clinrisk.stages.evaluate.run`; this is the same for callers holding three paths.)"""
    from clinrisk.bundle import load_bundle

    bundle = load_bundle(Path(bundle_dir))
    scored = score_split(Path(features_dir), bundle, cfg.evaluate)
    result = evaluate_scored(cfg, bundle, scored, dataset_categories(Path(features_dir)))
    result["bundle_dir"] = str(bundle_dir)
    return write_outputs(result, scored.frame, scored.p, Path(out_dir))


PREDICT_BATCH_ROWS = 262_144  # one batch's float32 model matrix: 1 MiB per feature


def predict_in_batches(
    bundle: Any, df: pl.DataFrame, rows: int = PREDICT_BATCH_ROWS
) -> npt.NDArray[np.float64]:
    """``bundle.predict_proba`` over ``df`` a batch of rows at a time, so only one batch's model matrix
    exists; rows are scored independently, so the numbers equal one call's."""
    parts = [
        np.asarray(bundle.predict_proba(df.slice(i, rows)), dtype=np.float64).reshape(-1)
        for i in range(0, df.height, rows)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def evaluate_bundle(
    cfg: ClinriskConfig, bundle: Any, df: pl.DataFrame, categories: dict[str, list[str]]
) -> tuple[dict[str, Any], npt.NDArray[np.float64]]:
    """Score a test frame held whole (``df``, with the model's features) with ``bundle`` and evaluate;
    returns the result and the probabilities. ``categories`` are the features dataset's (the bundle's spec
    if empty). The stage uses :func:`evaluate_scored`, which gives the same result."""
    p = predict_in_batches(bundle, df)
    return _evaluate_scores(cfg, bundle, df, p, categories, None), p


def evaluate_scored(
    cfg: ClinriskConfig, bundle: Any, scored: ScoredSplit, categories: dict[str, list[str]]
) -> dict[str, Any]:
    """:func:`evaluate_bundle` on a split :func:`score_split` scored: the same result, without the model's
    features of every row in memory."""
    return _evaluate_scores(cfg, bundle, scored.frame, scored.p, categories, scored.rows)


def _evaluate_scores(
    cfg: ClinriskConfig,
    bundle: Any,
    df: pl.DataFrame,
    p: npt.NDArray[np.float64],
    categories: dict[str, list[str]],
    rows_of: RowsFn | None,
) -> dict[str, Any]:
    categories = categories or dict(bundle.spec.get("categories") or {})
    # The bundle is the only truth after training: τ, the p_t it was chosen for, and the feature window.
    thr: dict[str, Any] = dict(bundle.threshold_info)
    tau = bundle.threshold
    p_t = bundle.threshold_probability
    window = bundle.spec.get("window_years")
    result = evaluate_predictions(
        cfg.evaluate,
        df,
        p,
        tau=tau,
        p_t=p_t,
        seed=cfg.run.seed,
        categories=categories,
        window_years=int(window) if window is not None else None,
        contrib=_bundle_contrib(bundle),
        rows_of=rows_of,
        workers=cfg.evaluate.workers or cfg.run.workers,
    )
    result["threshold"] = thr
    return result
