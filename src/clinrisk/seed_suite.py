"""Multi-seed uncertainty suite (issue 16, docs/science.md §1.9, §2.3): label strategies vs reference arms
over several generator seeds × LightGBM seeds, scored on true labels.

Per generator seed the clinical data are generated, validated and turned into one feature table in process
(the pipeline's own pure cores: :func:`clinrisk.features.features_lazy`, :func:`clinrisk.labels.build_labels`);
every arm then trains the same learner (``train.*`` LightGBM parameters, the same two patient-grouped
validation parts as :mod:`clinrisk.train`: early stopping on one, calibration chosen and fitted on the
other) on the same rows and differs only in its labels:

- ``E0`` / ``E1b`` / ``E2``: the label strategies (recorded data only, label cutoff applied);
- ``C`` (tier C): the same learner trained on the true labels (analysis only: the recoverable gap).

Oracle reference arms score the same test rows without training:

- ``A`` (tier A): ``eval_oracle_risk`` as computed today (the realised future hazards: a ceiling);
- ``B`` (tier B, plug-in): an oracle that sees the latent history only: 1 if onset ≤ t, else
  ``1 − (1 − h_{t+1})^H`` with ``h_{t+1}`` the hazard the true state through t implies for year t+1, held for
  the horizon. It is not the Monte-Carlo conditional expectation of §1.9 (the generator is not restartable
  mid-path); holding the hazard ignores its drift with age and glycaemia.

Each arm's test predictions are written per (generator seed, arm, LightGBM seed) as parquet; the summary
step reads them back, refuses arms that are not paired on the same rows, and prints per arm the mean and
between-seed SD of true-label AUC, AP, Brier, excess Brier (vs tier A), O/E and expected AUC (vs tier A),
and per generator seed the fraction of the E0 → C Brier gap that E2 closes, with a patient-cluster
bootstrap CI (B replicates, the Brier of each arm averaged over its LightGBM seeds).

Decision rule (:data:`RULE`): E2 ships as the default label strategy when the CI of its paired excess-Brier
difference to E0 lies below 0 in at least ``min_wins`` of the generator seeds (which must number at least
``min_seeds``); otherwise E0 stays. Excess Brier (vs tier A) removes the label-draw noise that true-label
Brier carries, and a paired difference has a fixed denominator: the earlier rule's share of the E0 → C gap
was a ratio whose denominator (≈ 0.001) was itself within sampling error, so its CI spanned ±10 in some
seeds. The share is still reported, guarded: only where the E0 → C gap's CI lies above 0. The issue's goal
(≥ 60 % closed with the CI excluding 0 in ≥ 4 of 5 seeds) is reported next to it.

Entry point: ``python -m clinrisk.seed_suite`` (``benchmarks/bench_uncertainty_seeds.py`` wraps it); bad
input prints one ``error: …`` line and exits 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from clinrisk.errors import ConfigError, DataError

FloatArray = npt.NDArray[np.float64]
TRAINED_ARMS: tuple[str, ...] = ("E0", "E1b", "E2", "C")
ORACLE_ARMS: tuple[str, ...] = ("B", "A")
ARM_LABELS = {
    "E0": "E0: hard recorded labels",
    "E1b": "E1b: recorded labels, ambiguous negatives weight 0",
    "E2": "E2: expected (soft) labels",
    "C": "tier C: same learner on true labels",
    "B": "tier B: oracle on the latent history (plug-in)",
    "A": "tier A: oracle with the realised future hazards",
}
KEYS = ["patient_id", "year"]
PRED_COLUMNS = ("patient_id", "year", "probability", "eval_label_true", "eval_oracle_risk")
SUMMARY_METRICS = ("auc", "ap", "brier", "excess_brier", "oe", "oe_expected", "expected_auc")
# Every trained arm's model is also calibrated by each fixed map (fitted on the same calibration part), so
# the maps are compared on identical scores; the file keeps them as ``probability_<method>`` columns.
COMPARED_CALIBRATIONS: tuple[str, ...] = ("none", "logistic", "beta", "isotonic")
CALIBRATION_METRICS = ("auc", "ap", "brier", "oe", "ece")
DEFAULT_OVERRIDES = ("split.temporal=false",)  # patient-disjoint, all years: a method comparison
RULE = (
    "E2 ships as the default label strategy when, in at least {min_wins} of the generator seeds (at least "
    "{min_seeds} seeds), the patient-cluster bootstrap CI ({ci:.0%}) of the paired difference in excess "
    "Brier (vs tier A's risk, free of label-draw noise) E2 − E0 lies below 0; otherwise E0 stays. The share "
    "of the E0 → tier C excess-Brier gap that E2 closes is reported only where that gap's CI lies above 0"
)


@dataclass
class SuiteSettings:
    """What the suite runs and how it decides."""

    generator_seeds: list[int]
    lgb_seeds: list[int] = field(default_factory=lambda: [1, 2])
    n_patients: int = 20_000
    n_boot: int = 1000
    calibration: str = "select"
    base_config: Path | None = None
    overrides: list[str] = field(default_factory=lambda: list(DEFAULT_OVERRIDES))
    min_seeds: int = 5
    min_wins: int = 4
    goal_fraction: float = 0.60
    ci_level: float = 0.95
    workers: int = 1

    def check(self) -> None:
        """Refuse settings the stated rule cannot be applied to (ConfigError naming the setting)."""
        from clinrisk.calibration import METHODS

        if self.calibration not in METHODS:
            raise ConfigError(
                f"--calibration: unknown method {self.calibration!r} (known: {', '.join(METHODS)})"
            )
        if len(set(self.generator_seeds)) != len(self.generator_seeds):
            raise ConfigError(f"--seeds: repeated generator seed in {self.generator_seeds}")
        if len(self.generator_seeds) < self.min_seeds:
            raise ConfigError(
                f"--seeds: {len(self.generator_seeds)} generator seed(s) is too short for the rule, which "
                f"needs at least {self.min_seeds} (wins in {self.min_wins} of them)"
            )
        if not 1 <= self.min_wins <= self.min_seeds:
            raise ConfigError(f"--min-wins: must be within 1..{self.min_seeds}, got {self.min_wins}")
        if not self.lgb_seeds or len(set(self.lgb_seeds)) != len(self.lgb_seeds):
            raise ConfigError(f"--lgb-seeds: need distinct LightGBM seeds, got {self.lgb_seeds}")
        if self.n_boot < 10:
            raise ConfigError(f"--boot: need at least 10 bootstrap replicates, got {self.n_boot}")
        if not 0.5 < self.ci_level < 1:
            raise ConfigError(f"--ci: must be in (0.5, 1), got {self.ci_level}")

    def rule(self) -> str:
        return RULE.format(min_wins=self.min_wins, min_seeds=self.min_seeds, ci=self.ci_level)


# ------------------------------------------------------------------------------------------ data per seed


def seed_config(settings: SuiteSettings, generator_seed: int) -> Any:
    """The clinical config of one generator seed (base config + suite overrides + scale)."""
    from clinrisk.config import load_config

    cfg = load_config(
        settings.base_config,
        [
            *settings.overrides,
            f"run.seed={generator_seed}",
            f"generate.n_patients={settings.n_patients}",
            f"run.workers={settings.workers}",
        ],
    )
    if cfg.run.usecase != "clinical":
        raise ConfigError(f"run.usecase={cfg.run.usecase!r}: the seed suite needs the clinical generator")
    return cfg


def history_oracle(truth: pl.LazyFrame, horizon_years: int) -> pl.LazyFrame:
    """Tier B (plug-in) per (patient_id, year): 1 if onset ≤ t, else 1 − (1 − h_{t+1})^H (module doc)."""
    base = truth.select(
        pl.col("patient_id").cast(pl.Int64),
        pl.col("year").cast(pl.Int16),
        pl.col("onset_year").cast(pl.Int32).alias("_onset"),
    )
    nxt = truth.select(
        pl.col("patient_id").cast(pl.Int64),
        (pl.col("year").cast(pl.Int32) - 1).cast(pl.Int16).alias("year"),
        pl.col("hazard").cast(pl.Float64).alias("_h_next"),
    )
    risk = (
        pl.when(pl.col("_onset") <= pl.col("year").cast(pl.Int32))
        .then(1.0)
        .otherwise(1.0 - (1.0 - pl.col("_h_next").fill_null(0.0)) ** horizon_years)
    )
    return base.join(nxt, on=KEYS, how="left").select(*KEYS, risk.alias("eval_oracle_b"))


def seed_frame(cfg: Any, workdir: Path) -> tuple[pl.DataFrame, list[str], dict[str, list[str]]]:
    """Generate, validate and build the feature table of one seed, with every arm's labels as columns
    (``label_<arm>``, ``weight_<arm>``) and the tier-B risk (the arms share the rows by construction);
    also the model's feature names and categorical levels (the fitted feature spec)."""
    from clinrisk.calibration import VALIDATION_PART_SALT, patient_fold_expr
    from clinrisk.features import features_lazy, fit_feature_spec
    from clinrisk.generator.dataset import generate_dataset
    from clinrisk.io import list_shards
    from clinrisk.labels import build_labels
    from clinrisk.splits import label_known_through_expr, split_expr
    from clinrisk.validate import validate_dataset

    raw_dir, run_dir = workdir / "raw", workdir / "run"
    generate_dataset(cfg, raw_dir, workers=cfg.run.workers, progress=False)
    validate_dataset(cfg, raw_dir, run_dir, workers=cfg.run.workers)
    validated = list_shards(run_dir / "validated")
    truth_files = sorted((raw_dir / "truth").glob("shard=*/*.parquet"))
    if not validated or not truth_files:
        raise DataError(f"{workdir}: generated data lack validated or truth shards")
    raw = pl.scan_parquet([str(f) for f in validated])
    truth = pl.scan_parquet([str(f) for f in truth_files])
    spec = fit_feature_spec(raw, cfg)
    h = cfg.labels.horizon_years
    df = features_lazy(raw, spec, cfg, truth).collect()
    df = df.rename({"label": "label_E0", "sample_weight": "weight_E0"})
    known = label_known_through_expr(cfg.split, h, cfg.generate.last_year)
    # as features_lazy labels them: the calibration part's labels follow labels.calibration_target
    calibration_rows = (split_expr(cfg.split, h) == "validation") & (
        patient_fold_expr(2, salt=VALIDATION_PART_SALT) == 1
    )
    for strategy in ("E1b", "E2"):
        lab = build_labels(
            raw,
            cfg.labels.model_copy(update={"strategy": strategy}),
            first_prediction_year=int(cfg.generate.first_year + cfg.generate.burn_in_years),
            last_year=cfg.generate.last_year,
            known_through=known,
            reweight_rows=split_expr(cfg.split, h) == "train",
            calibration_rows=calibration_rows,
        ).collect()
        lab = lab.select(
            pl.col("patient_id").cast(pl.Int64),
            pl.col("year").cast(pl.Int16),
            pl.col("label").alias(f"label_{strategy}"),
            pl.col("sample_weight").alias(f"weight_{strategy}"),
        )
        joined = df.select(KEYS).join(lab, on=KEYS, how="left")
        if lab.height != df.height or joined[f"label_{strategy}"].null_count():
            raise DataError(
                f"arms not paired: {strategy} labels cover {lab.height} rows, E0 {df.height} (same rows needed)"
            )
        df = df.join(lab, on=KEYS, how="left")
    df = df.with_columns(
        pl.col("eval_label_true").cast(pl.Float32).alias("label_C"), pl.lit(1.0, pl.Float32).alias("weight_C")
    )
    df = df.join(history_oracle(truth, h).collect(), on=KEYS, how="left").with_columns(
        pl.col("eval_oracle_b").fill_null(pl.col("eval_oracle_risk").cast(pl.Float64))
    )
    names = list(spec.feature_names)
    return df, names, {n: spec.categories[n] for n in names if n in spec.categories}


# --------------------------------------------------------------------------------------------- training


def _parts(df: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """train / early-stopping / calibration / test rows, cut exactly as :mod:`clinrisk.train` cuts them."""
    from clinrisk.calibration import patient_fold
    from clinrisk.train import VALIDATION_PART_SALT

    split = df["split"].cast(pl.String)
    part = pl.Series(patient_fold(df["patient_id"].to_numpy(), 2, salt=VALIDATION_PART_SALT))
    return {
        "train": df.filter(split == "train"),
        "stop": df.filter((split == "validation") & (part == 0)),
        "calibration": df.filter((split == "validation") & (part == 1)),
        "test": df.filter(split == "test"),
    }


def train_arm(
    parts: dict[str, pl.DataFrame],
    arm: str,
    cfg: Any,
    feature_names: list[str],
    categories: dict[str, list[str]],
    lgb_seed: int,
    calibration: str,
) -> tuple[FloatArray, dict[str, Any], dict[str, FloatArray]]:
    """Fit one arm (labels ``label_<arm>``, weights ``weight_<arm>``); return its calibrated test risk, run
    info and the test risk under every map of :data:`COMPARED_CALIBRATIONS` (a map that cannot be fitted on
    this calibration part is left out and named in the info)."""
    import lightgbm as lgb

    from clinrisk.bundle import features_to_matrix
    from clinrisk.calibration import apply_calibration, fit_calibration, select_calibration
    from clinrisk.train import is_soft, lgb_params

    def rows(name: str) -> tuple[pl.DataFrame, FloatArray, FloatArray]:
        d = parts[name].filter(pl.col(f"weight_{arm}") > 0)
        return (
            d,
            d[f"label_{arm}"].cast(pl.Float64).to_numpy(),
            d[f"weight_{arm}"].cast(pl.Float64).to_numpy(),
        )

    tr, y_tr, w_tr = rows("train")
    st, y_st, w_st = rows("stop")
    ca, y_ca, w_ca = rows("calibration")
    if tr.height == 0 or st.height == 0 or ca.height == 0:
        raise DataError(f"arm {arm}: an empty train / early-stopping / calibration part (scale too small)")
    if not 0 < y_tr.sum() < y_tr.size:
        raise DataError(f"arm {arm}: training labels have a single class (scale too small)")
    # the objective follows the fitted labels; calibration-part labels may be expected true labels
    objective = "cross_entropy" if is_soft(y_tr) or is_soft(y_st) else "binary"
    params = {**lgb_params(cfg, objective), "seed": int(lgb_seed)}
    cat = [n for n in feature_names if n in categories]
    X = {k: features_to_matrix(d, feature_names, categories) for k, d in (("tr", tr), ("st", st), ("ca", ca))}
    dtr = lgb.Dataset(X["tr"], label=y_tr, weight=w_tr, feature_name=feature_names, categorical_feature=cat)
    dst = lgb.Dataset(X["st"], label=y_st, weight=w_st, reference=dtr)
    booster = lgb.train(
        params,
        dtr,
        num_boost_round=cfg.train.num_boost_round,
        valid_sets=[dst],
        callbacks=[
            lgb.early_stopping(cfg.train.early_stopping_rounds, first_metric_only=True, verbose=False)
        ],
    )
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    z_ca = np.asarray(booster.predict(X["ca"], num_iteration=best, raw_score=True), dtype=np.float64)
    if calibration == "select":
        cal = select_calibration(z_ca, y_ca, w_ca, ca["patient_id"].to_numpy())
    else:
        cal = fit_calibration(z_ca, y_ca, w_ca, method=calibration)  # type: ignore[arg-type]
    x_te = features_to_matrix(parts["test"], feature_names, categories)
    z_te = np.asarray(booster.predict(x_te, num_iteration=best, raw_score=True), dtype=np.float64)
    info: dict[str, Any] = {"objective": objective, "best_iteration": int(best), "calibration": cal["method"]}
    if "selection" in cal:
        info["calibration_ap_change_vs_none"] = cal["selection"]["held_out_ap_change_vs_none"]
    compared: dict[str, FloatArray] = {}
    for method in COMPARED_CALIBRATIONS:
        try:
            fixed = fit_calibration(z_ca, y_ca, w_ca, method=method)  # type: ignore[arg-type]
        except DataError as exc:
            info.setdefault("calibration_not_fitted", {})[method] = str(exc)
            continue
        compared[method] = apply_calibration(fixed, z_te)
    return apply_calibration(cal, z_te), info, compared


def run_seed(settings: SuiteSettings, generator_seed: int, out_dir: Path) -> dict[str, Any]:
    """All arms × LightGBM seeds of one generator seed; writes ``seed=<s>/<arm>_lgb<k>.parquet``."""
    cfg = seed_config(settings, generator_seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"seed-suite-{generator_seed}-") as tmp:
        df, spec_names, categories = seed_frame(cfg, Path(tmp))
    data_s = time.perf_counter() - t0
    parts = _parts(df)
    test = parts["test"]
    dest = out_dir / f"seed={generator_seed}"
    dest.mkdir(parents=True, exist_ok=True)
    base = test.select(
        pl.col("patient_id").cast(pl.Int64),
        pl.col("year").cast(pl.Int16),
        pl.col("eval_label_true").cast(pl.Int8),
        pl.col("eval_oracle_risk").cast(pl.Float64),
    )
    runs: dict[str, Any] = {}
    for arm in TRAINED_ARMS:
        for k in settings.lgb_seeds:
            p, info, compared = train_arm(parts, arm, cfg, spec_names, categories, k, settings.calibration)
            base.with_columns(
                pl.Series("probability", p), *(pl.Series(f"probability_{m}", v) for m, v in compared.items())
            ).write_parquet(dest / f"{arm}_lgb{k}.parquet")
            runs[f"{arm}_lgb{k}"] = info
    for arm, col in (("A", "eval_oracle_risk"), ("B", "eval_oracle_b")):
        base.with_columns(test[col].cast(pl.Float64).alias("probability")).write_parquet(
            dest / f"{arm}.parquet"
        )
    info = {
        "generator_seed": generator_seed,
        "n_patients": settings.n_patients,
        "run_key": seed_run_key(settings),
        "rows": {k: v.height for k, v in parts.items()},
        "test_patients": int(test["patient_id"].n_unique()),
        "runs": runs,
        "data_wall_s": round(data_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    from clinrisk.io import json_safe, write_json

    write_json(dest / "seed.json", json_safe(info))  # written last: marks the seed complete for --resume
    return info


def seed_run_key(settings: SuiteSettings) -> dict[str, Any]:
    """What a seed's predictions depend on: a finished seed is reused by ``--resume`` only if it matches."""
    return {
        "n_patients": settings.n_patients,
        "lgb_seeds": list(settings.lgb_seeds),
        "calibration": settings.calibration,
        "base_config": str(settings.base_config) if settings.base_config else None,
        "overrides": list(settings.overrides),
    }


def finished_seed(settings: SuiteSettings, generator_seed: int, out_dir: Path) -> dict[str, Any] | None:
    """The info of a seed already run with the same settings (``seed=<s>/seed.json``), else None."""
    from clinrisk.io import read_json

    f = out_dir / f"seed={generator_seed}" / "seed.json"
    if not f.is_file():
        return None
    info = dict(read_json(f))
    return info if info.get("run_key") == seed_run_key(settings) else None


# ---------------------------------------------------------------------------------------------- summary


def load_predictions(out_dir: Path) -> dict[int, dict[str, list[pl.DataFrame]]]:
    """``{generator_seed: {arm: [frame per LightGBM seed]}}`` from a suite directory, arms checked paired:
    every file of a seed must hold the same (patient_id, year) rows, in order, with the same true labels."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DataError(f"{out_dir}: suite directory not found")
    seeds: dict[int, dict[str, list[pl.DataFrame]]] = {}
    for d in sorted(out_dir.glob("seed=*")):
        try:
            s = int(d.name.split("=", 1)[1])
        except ValueError:
            raise DataError(f"{d}: not a seed=<int> directory") from None
        arms: dict[str, list[pl.DataFrame]] = {}
        for f in sorted(d.glob("*.parquet")):
            arm = f.stem.split("_lgb", 1)[0]
            if arm not in (*TRAINED_ARMS, *ORACLE_ARMS):
                raise DataError(
                    f"{f}: unknown arm {arm!r} (known: {', '.join((*TRAINED_ARMS, *ORACLE_ARMS))})"
                )
            try:
                frame = pl.read_parquet(f)
            except Exception as exc:  # any unreadable file is one bad-input line
                raise DataError(f"{f}: not a readable parquet file ({type(exc).__name__})") from None
            missing = [c for c in PRED_COLUMNS if c not in frame.columns]
            if missing:
                raise DataError(f"{f}: missing column(s) {missing}")
            arms.setdefault(arm, []).append(frame)
        absent = [a for a in (*TRAINED_ARMS, *ORACLE_ARMS) if a not in arms]
        if absent:
            raise DataError(f"{d}: arm(s) {absent} have no predictions")
        check_paired(arms, where=str(d))
        seeds[s] = arms
    if not seeds:
        raise DataError(f"{out_dir}: no seed=<n> directories with predictions")
    return seeds


def check_paired(arms: dict[str, list[pl.DataFrame]], where: str) -> None:
    """DataError unless every arm's frames hold the reference arm's rows, in order, with its true labels."""
    ref_arm = next(iter(arms))
    ref = arms[ref_arm][0].select(*KEYS, "eval_label_true")
    for arm, frames in arms.items():
        for i, f in enumerate(frames):
            got = f.select(*KEYS, "eval_label_true")
            if got.height != ref.height or not got.equals(ref):
                raise DataError(
                    f"{where}: arms not paired on the same rows: {arm} (file {i + 1}) has {got.height} rows, "
                    f"{ref_arm} {ref.height}, or their (patient_id, year, true label) differ"
                )


def frame_metrics(df: pl.DataFrame) -> dict[str, float]:
    """True-label AUC, AP, Brier, excess Brier vs tier A, O/E, expected O/E (Σ p^A / Σ p̂) and expected AUC
    vs tier A."""
    from clinrisk import metrics as M

    y = df["eval_label_true"].cast(pl.Float64).to_numpy()
    p = df["probability"].cast(pl.Float64).to_numpy()
    pa = df["eval_oracle_risk"].cast(pl.Float64).to_numpy()
    return {
        "auc": M.roc_auc(y, p),
        "ap": M.average_precision(y, p),
        "brier": M.brier(y, p),
        "excess_brier": float(np.mean((p - pa) ** 2)),
        "oe": float(y.sum() / p.sum()),
        # against tier A's risk instead of the drawn labels: calibration without the label-draw noise
        "oe_expected": float(pa.sum() / p.sum()),
        "expected_auc": M.expected_auc(p, pa),
    }


def calibration_comparison(seeds: dict[int, dict[str, list[pl.DataFrame]]]) -> dict[str, Any]:
    """Per trained arm and calibration map: the mean over generator seeds (of each seed's mean over its
    LightGBM seeds) of true-label AUC, AP, Brier, O/E and ECE, plus the largest |ΔAUC| against the
    uncalibrated scores in any single fit (a monotone map keeps it at rounding level).

    Only maps present in every file of an arm are compared; suites written before the comparison existed
    give an empty result."""
    from clinrisk import metrics as M

    out: dict[str, Any] = {}
    for arm in TRAINED_ARMS:
        frames = [f for arms in seeds.values() for f in arms[arm]]
        methods = [m for m in COMPARED_CALIBRATIONS if all(f"probability_{m}" in f.columns for f in frames)]
        if "none" not in methods:
            continue
        per_method: dict[str, Any] = {}
        for method in methods:
            per_seed: dict[str, list[float]] = {k: [] for k in CALIBRATION_METRICS}
            worst_auc = 0.0
            for arms in seeds.values():
                vals: dict[str, list[float]] = {k: [] for k in CALIBRATION_METRICS}
                for f in arms[arm]:
                    y = f["eval_label_true"].cast(pl.Float64).to_numpy()
                    p = f[f"probability_{method}"].cast(pl.Float64).to_numpy()
                    auc = M.roc_auc(y, p)
                    worst_auc = max(worst_auc, abs(auc - M.roc_auc(y, f["probability_none"].to_numpy())))
                    vals["auc"].append(auc)
                    vals["ap"].append(M.average_precision(y, p))
                    vals["brier"].append(M.brier(y, p))
                    vals["oe"].append(float(y.sum() / p.sum()))
                    vals["ece"].append(expected_calibration_error(y, p))
                for k in CALIBRATION_METRICS:
                    per_seed[k].append(float(np.mean(vals[k])))
            per_method[method] = {k: float(np.mean(v)) for k, v in per_seed.items()}
            per_method[method]["max_abs_auc_change_vs_none"] = worst_auc
        for v in per_method.values():
            v["ap_change_vs_none"] = v["ap"] - per_method["none"]["ap"]
        out[arm] = per_method
    return out


def expected_calibration_error(y: FloatArray, p: FloatArray, bins: int = 10) -> float:
    """ECE over equal-count bins of the predicted risk: Σ_b (n_b / n)·|mean y_b − mean p_b|."""
    order = np.argsort(p, kind="stable")
    parts = np.array_split(order, bins)
    n = float(p.size)
    return float(sum(idx.size / n * abs(y[idx].mean() - p[idx].mean()) for idx in parts if idx.size))


def gap_closed(
    arms: dict[str, list[pl.DataFrame]], n_boot: int, seed: int, ci_level: float
) -> dict[str, float]:
    """E2 against E0 and tier C on one generator seed (each arm's scores averaged over its LightGBM seeds),
    with patient-cluster bootstrap percentile CIs (patients resampled once per replicate, all arms):

    - the paired difference of excess Brier (vs tier A's risk, free of label-draw noise, docs/science.md
      §1.9) E2 − E0, the rule's criterion, and of true-label Brier (reported);
    - the share of the E0 → C excess-Brier gap that E2 closes, only where that gap is resolved (its CI lies
      above 0); an unresolved denominator makes the ratio meaningless, so it is reported as such
      (``gap_resolved`` false, share NaN) instead of a CI spanning ±10."""
    from clinrisk import metrics as M

    ref = arms["E0"][0]
    y = ref["eval_label_true"].cast(pl.Float64).to_numpy()
    pa = ref["eval_oracle_risk"].cast(pl.Float64).to_numpy()
    codes, n_pat = M.patient_codes(ref["patient_id"].to_numpy())
    rows = np.bincount(codes, minlength=n_pat).astype(np.float64)

    def per_patient(arm: str, target: FloatArray) -> FloatArray:
        sq = np.mean(
            [(f["probability"].cast(pl.Float64).to_numpy() - target) ** 2 for f in arms[arm]], axis=0
        )
        return np.bincount(codes, weights=sq, minlength=n_pat).astype(np.float64)

    counts = M.cluster_counts(n_pat, n_boot, seed).astype(np.float64)
    n_rep = counts @ rows
    alpha = 1 - ci_level
    q = [alpha / 2, 1 - alpha / 2]
    out: dict[str, Any] = {"test_patients": n_pat, "test_rows": int(y.size)}
    reps: dict[str, dict[str, FloatArray]] = {}
    for name, target in (("brier", y), ("excess_brier", pa)):
        s = {a: per_patient(a, target) for a in ("E0", "E2", "C")}
        point = {a: float(v.sum() / rows.sum()) for a, v in s.items()}
        reps[name] = {a: (counts @ v) / n_rep for a, v in s.items()}
        d_lo, d_hi = np.quantile(reps[name]["E2"] - reps[name]["E0"], q)
        out.update({f"{name}_{a}": point[a] for a in point})
        out[f"delta_{name}_E2_E0"] = point["E2"] - point["E0"]
        out[f"delta_{name}_lo"], out[f"delta_{name}_hi"] = float(d_lo), float(d_hi)
    rep = reps["excess_brier"]
    gap = out["excess_brier_E0"] - out["excess_brier_C"]
    g_lo, g_hi = np.quantile(rep["E0"] - rep["C"], q)
    resolved = bool(g_lo > 0)
    frac, lo, hi = math.nan, math.nan, math.nan
    if resolved:
        frac = (out["excess_brier_E0"] - out["excess_brier_E2"]) / gap
        lo, hi = (float(v) for v in np.quantile((rep["E0"] - rep["E2"]) / (rep["E0"] - rep["C"]), q))
    out.update(
        {
            "gap_E0_C": gap,
            "gap_lo": float(g_lo),
            "gap_hi": float(g_hi),
            "gap_resolved": resolved,
            "fraction_closed": frac,
            "lo": lo,
            "hi": hi,
        }
    )
    return out


def summarise(out_dir: Path, settings: SuiteSettings) -> dict[str, Any]:
    """Per-arm means/SDs over generator seeds, the per-seed gap fractions and the decision by :data:`RULE`."""
    settings.check()
    seeds = load_predictions(out_dir)
    if len(seeds) < settings.min_seeds:
        raise ConfigError(
            f"{out_dir}: {len(seeds)} generator seed(s) is too short for the rule, which needs at least "
            f"{settings.min_seeds}"
        )
    per_seed: dict[str, dict[str, dict[str, float]]] = {}
    for s, arms in seeds.items():
        per_seed[str(s)] = {
            arm: {k: float(np.mean([frame_metrics(f)[k] for f in frames])) for k in SUMMARY_METRICS}
            for arm, frames in arms.items()
        }
    arms_summary: dict[str, dict[str, dict[str, float]]] = {}
    for arm in (*TRAINED_ARMS, *ORACLE_ARMS):
        arms_summary[arm] = {}
        for k in SUMMARY_METRICS:
            v = np.array([per_seed[s][arm][k] for s in per_seed])
            arms_summary[arm][k] = {
                "mean": float(v.mean()),
                "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            }
    fractions = {str(s): gap_closed(arms, settings.n_boot, s, settings.ci_level) for s, arms in seeds.items()}
    wins = sum(1 for f in fractions.values() if f["delta_excess_brier_hi"] < 0)
    goal_hits = sum(
        1
        for f in fractions.values()
        if f["gap_resolved"] and f["lo"] > 0 and f["fraction_closed"] >= settings.goal_fraction
    )
    winner = "E2" if wins >= settings.min_wins else "E0"
    m = {a: {k: v["mean"] for k, v in arms_summary[a].items()} for a in arms_summary}
    goals = {
        "e2_closes_gap": {
            "target": f">= {settings.goal_fraction:.0%} closed with CI excluding 0 in >= {settings.min_wins} "
            f"of {len(fractions)} seeds",
            "seeds_meeting": goal_hits,
            "met": goal_hits >= settings.min_wins,
        },
        "auc_vs_tier_c": {
            "target": "true-label AUC >= tier C - 0.005",
            **{a: m[a]["auc"] - m["C"]["auc"] for a in ("E0", "E1b", "E2")},
            "met_by_winner": m[winner]["auc"] >= m["C"]["auc"] - 0.005,
        },
        "expected_auc_gap_to_a": {
            "target": "<= 0.025",
            **{a: m["A"]["expected_auc"] - m[a]["expected_auc"] for a in ("E0", "E1b", "E2", "C")},
            "met_by_winner": m["A"]["expected_auc"] - m[winner]["expected_auc"] <= 0.025,
        },
        "expected_auc_gap_to_b": {
            "target": "reported",
            **{a: m["B"]["expected_auc"] - m[a]["expected_auc"] for a in ("E0", "E1b", "E2", "C")},
        },
        "oe_in_band": {
            "target": "[0.95, 1.05] (suite scale; the shipped model's figure is the default run's)",
            **{a: m[a]["oe"] for a in ("E0", "E1b", "E2", "C", "A")},
            "expected": {a: m[a]["oe_expected"] for a in ("E0", "E1b", "E2", "C")},
            "met_by_winner": 0.95 <= m[winner]["oe"] <= 1.05,
        },
    }
    return {
        "suite_dir": str(out_dir),
        "generator_seeds": sorted(seeds),
        "lgb_seeds_per_arm": {a: len(seeds[min(seeds)][a]) for a in TRAINED_ARMS},
        "bootstrap_replicates": settings.n_boot,
        "ci_level": settings.ci_level,
        "arms": arms_summary,
        "per_seed": per_seed,
        "fraction_closed": fractions,
        "rule": settings.rule(),
        "wins": wins,
        "winner": winner,
        "goals": goals,
        "calibration_comparison": calibration_comparison(seeds),
    }


def _f(x: Any, spec: str = ".4f") -> str:
    return format(x, spec) if isinstance(x, int | float) and math.isfinite(float(x)) else "–"


def render(summary: dict[str, Any], meta: dict[str, Any] | None = None) -> str:
    """Markdown tables: per-arm mean ± between-seed SD, and the per-seed share of the gap E2 closes."""
    n = len(summary["generator_seeds"])
    lines = [
        f"# Multi-seed uncertainty suite ({n} generator seeds; trained arms × "
        f"{summary['lgb_seeds_per_arm']['E0']} LightGBM seeds; B = {summary['bootstrap_replicates']})",
        "",
    ]
    if meta:
        lines += [
            f"Scale: {meta.get('n_patients')} patients per generator seed; "
            f"overrides {meta.get('overrides')}; calibration {meta.get('calibration')}.",
            "",
        ]
    lines += [
        "True labels, test rows; mean ± between-seed SD (each seed's value is the mean over its LightGBM "
        "seeds). Excess Brier, expected O/E (Σ p^A / Σ p̂) and expected AUC are against tier A's risk.",
        "",
        "| arm | AUC | AP | Brier | excess Brier | O/E | expected O/E | expected AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in (*TRAINED_ARMS, *ORACLE_ARMS):
        a = summary["arms"][arm]
        cells = []
        for k in SUMMARY_METRICS:
            spec = ".5f" if "brier" in k else ".4f"
            cells.append(f"{_f(a[k]['mean'], spec)} ± {_f(a[k]['sd'], spec)}")
        lines.append(f"| {ARM_LABELS[arm]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"E2 against E0 per generator seed ({summary['ci_level']:.0%} patient-cluster bootstrap CIs; excess "
        "Brier is against tier A's risk; the share of the E0 → C excess-Brier gap is shown only where that "
        "gap's CI lies above 0):",
        "",
        "| generator seed | test rows | excess Brier E0 / E2 / C | Δexcess Brier E2−E0 [CI] | ΔBrier E2−E0 [CI] "
        "| gap E0−C [CI] | share closed [CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, f in summary["fraction_closed"].items():
        share = (
            f"{_f(f['fraction_closed'], '.2f')} [{_f(f['lo'], '.2f')}, {_f(f['hi'], '.2f')}]"
            if f["gap_resolved"]
            else "gap not resolved"
        )
        lines.append(
            f"| {s} | {f['test_rows']} | {_f(f['excess_brier_E0'], '.5f')} / {_f(f['excess_brier_E2'], '.5f')} / "
            f"{_f(f['excess_brier_C'], '.5f')} | {_f(f['delta_excess_brier_E2_E0'], '+.5f')} "
            f"[{_f(f['delta_excess_brier_lo'], '+.5f')}, {_f(f['delta_excess_brier_hi'], '+.5f')}] | "
            f"{_f(f['delta_brier_E2_E0'], '+.5f')} [{_f(f['delta_brier_lo'], '+.5f')}, "
            f"{_f(f['delta_brier_hi'], '+.5f')}] | {_f(f['gap_E0_C'], '+.5f')} [{_f(f['gap_lo'], '+.5f')}, "
            f"{_f(f['gap_hi'], '+.5f')}] | {share} |"
        )
    g = summary["goals"]
    lines += [
        "",
        f"Rule: {summary['rule']}.",
        f"Verdict: **{summary['winner']}** (Δexcess-Brier CI below 0 in {summary['wins']} of {n} seeds).",
        "",
        "Goals: E2 closes ≥ 60 % with CI excluding 0 in "
        f"{g['e2_closes_gap']['seeds_meeting']} of {n} seeds ({'met' if g['e2_closes_gap']['met'] else 'NOT met'}); "
        "AUC − tier C: "
        + ", ".join(f"{a} {_f(g['auc_vs_tier_c'][a], '+.4f')}" for a in ("E0", "E1b", "E2"))
        + "; expected-AUC gap to tier A: "
        + ", ".join(f"{a} {_f(g['expected_auc_gap_to_a'][a], '.4f')}" for a in ("E0", "E1b", "E2", "C"))
        + "; to tier B: "
        + ", ".join(f"{a} {_f(g['expected_auc_gap_to_b'][a], '.4f')}" for a in ("E0", "E1b", "E2", "C"))
        + "; true-label O/E (target [0.95, 1.05]): "
        + ", ".join(f"{a} {_f(g['oe_in_band'][a], '.3f')}" for a in ("E0", "E1b", "E2", "C", "A"))
        + " (expected O/E vs tier A: "
        + ", ".join(f"{a} {_f(g['oe_in_band']['expected'][a], '.3f')}" for a in ("E0", "E1b", "E2", "C"))
        + ").",
    ]
    comparison = summary.get("calibration_comparison") or {}
    if comparison:
        lines += [
            "",
            "Calibration maps on the same models (each fitted on the calibration part; true labels, test rows; "
            "mean over generator seeds; max |ΔAUC| is over single fits):",
            "",
            "| arm | map | AUC | max \\|ΔAUC\\| vs none | AP | ΔAP vs none | Brier | O/E | ECE |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for arm, per_method in comparison.items():
            for method, v in per_method.items():
                lines.append(
                    f"| {arm} | {method} | {_f(v['auc'])} | {_f(v['max_abs_auc_change_vs_none'], '.1e')} | "
                    f"{_f(v['ap'])} | {_f(v['ap_change_vs_none'], '+.4f')} | {_f(v['brier'], '.5f')} | "
                    f"{_f(v['oe'], '.3f')} | {_f(v['ece'], '.4f')} |"
                )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- command


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (the project's bad-input contract)
        print(f"error: arguments: {message}", file=sys.stderr)
        raise SystemExit(2)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m clinrisk.seed_suite", description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument(
        "--seeds", type=_ints, default=[11, 12, 13, 14, 15], help="generator seeds (>= --min-seeds)"
    )
    p.add_argument("--lgb-seeds", type=_ints, default=[1, 2], help="LightGBM seeds per trained arm")
    p.add_argument("--patients", type=int, default=20_000, help="patients per generator seed")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap replicates B")
    p.add_argument("--calibration", default="select", help="calibration method of every trained arm")
    p.add_argument("--config", type=Path, default=None, help="base config (default: the embedded default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    p.add_argument("--min-seeds", type=int, default=5)
    p.add_argument("--min-wins", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("outputs/seed_suite"), help="suite directory")
    p.add_argument("--summarise-only", action="store_true", help="only re-read --out and print the table")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--resume", action="store_true", help="reuse seeds of --out already finished with the same settings"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the suite (or only summarise an existing one) and print the table; bad input → exit 2."""
    from clinrisk.io import json_safe, write_json

    try:
        a = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad argument (2, already printed as one line)
        return int(exc.code or 0)
    try:
        if a.patients < 100:
            raise ConfigError(f"--patients: need at least 100, got {a.patients}")
        settings = SuiteSettings(
            generator_seeds=a.seeds,
            lgb_seeds=a.lgb_seeds,
            n_patients=a.patients,
            n_boot=a.boot,
            calibration=a.calibration,
            base_config=a.config,
            overrides=[*DEFAULT_OVERRIDES, *a.overrides],
            min_seeds=a.min_seeds,
            min_wins=a.min_wins,
            workers=a.workers,
        )
        if a.summarise_only:
            settings.check()
        else:
            settings.check()
            if a.config is not None and not a.config.is_file():
                raise ConfigError(f"--config {a.config}: not found")
            seed_config(settings, settings.generator_seeds[0])  # fail fast on a bad override
            a.out.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            runs = []
            for s in settings.generator_seeds:
                info = (finished_seed(settings, s, a.out) if a.resume else None) or run_seed(
                    settings, s, a.out
                )
                runs.append(info)
                print(f"seed {s}: {info['rows']['test']} test rows, {info['wall_s']} s", file=sys.stderr)
            write_json(
                a.out / "runs.json",
                json_safe(
                    {
                        "n_patients": a.patients,
                        "overrides": settings.overrides,
                        "calibration": a.calibration,
                        "wall_s": round(time.perf_counter() - t0, 1),
                        "seeds": runs,
                    }
                ),
            )
        summary = summarise(a.out, settings)
        meta_file = a.out / "runs.json"
        from clinrisk.io import read_json

        meta = dict(read_json(meta_file)) if meta_file.is_file() else None
        text = render(summary, meta)
        write_json(a.out / "summary.json", json_safe({**summary, "meta": meta}))
        (a.out / "summary.md").write_text(text)
        print(text)
        return 0
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
