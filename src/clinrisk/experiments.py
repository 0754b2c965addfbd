"""Experiment suites: named pipeline runs from one base config, compared with paired bootstraps.

A suite YAML (``configs/experiments/*.yaml``)::

    name: uncertainty
    description: ...
    base_config: configs/tiny.yaml        # relative to the working directory or to the suite file
    base_overrides: [split.temporal=false]
    matrix:                               # optional cells; every arm runs in every cell
      - {name: none, overrides: [generate.delay_severity=none]}
    runs:                                 # arms, listed in increasing complexity (one-SE rule order)
      - {name: E0, key_change: "naive recorded labels", overrides: [labels.strategy=E0]}
    baseline: E0                          # arm every other arm of the same cell is compared with
    winner: {rule: best_with_ci, metric: brier, labels: true, split: test}

Override order per run: base_overrides, cell overrides, arm overrides, then the caller's ``--set``s (scale
knobs such as ``generate.n_patients=20000``). Every run goes through the same pipeline
(:func:`clinrisk.pipeline_runner.run_local`, or ``submit_pipeline`` on a Kubeflow host) and is an MLflow
run in the suite's experiment. :func:`compare_runs` joins test predictions on (patient_id, year) and
reports, per run, true- and recorded-label metrics and paired patient-cluster bootstrap deltas vs the
baseline, then applies the stated winner rule:

- ``best_with_ci``: within each cell, the best point estimate among arms whose paired-difference CI vs
  the baseline excludes 0 in the improving direction; none → the baseline stays.
- ``one_se`` (paired, per cell): the best arm by point metric; every other arm is joined with it on
  (patient_id, year) and one patient-cluster bootstrap gives the SE of their paired difference; the first
  arm (listed order = simplest first) with (best − arm) ≤ that SE wins (docs/science.md §3.2), on ``split``
  (validation: both labels from the features dataset, scored with each run's bundle).

Local suites reuse generated+validated data across arms with identical generate/validate sections and
seed (:mod:`clinrisk.datacache`).
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clinrisk.config.monitoring import ExperimentsConfig
from clinrisk.errors import ConfigError, DataError
from clinrisk.io import json_safe, read_json, write_json
from clinrisk.report import markdown_to_html

SUITE_RESULT = "suite_result.json"
COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
COMPARISON_HTML = "comparison.html"  # what MLflow's artefact viewer renders (it shows .md as text)
# Metrics in the comparison table and their improving direction.
METRIC_DIRECTION: dict[str, Literal["higher", "lower"]] = {
    "brier": "lower",
    "ap": "higher",
    "net_benefit": "higher",
    "auc": "higher",
    "log_loss": "lower",
    "oe": "higher",  # shown, not ranked
    "cal_slope": "higher",
    "excess_brier": "lower",
}
TABLE_METRICS = ("brier", "ap", "net_benefit", "auc")
LABEL_COLUMNS = {"true": "eval_label_true", "recorded": "label_rec"}
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CellSpec(_Strict):
    """One matrix cell: a name and the overrides every arm gets in it."""

    name: str = Field(min_length=1)
    overrides: list[str] = Field(default_factory=list)


class ArmSpec(_Strict):
    """One arm of the suite."""

    name: str = Field(min_length=1)
    key_change: str = ""
    overrides: list[str] = Field(default_factory=list)
    cell_overrides: dict[str, list[str]] = Field(default_factory=dict)


class WinnerRule(_Strict):
    """How the winner is chosen (stated in the report)."""

    rule: Literal["best_with_ci", "one_se"] = "best_with_ci"
    metric: str = "brier"
    labels: Literal["true", "recorded"] = "true"
    split: Literal["test", "validation"] = "test"

    @model_validator(mode="after")
    def _known(self) -> WinnerRule:
        if self.metric not in METRIC_DIRECTION:
            raise ValueError(f"winner.metric: unknown {self.metric!r}; known {sorted(METRIC_DIRECTION)}")
        return self

    def statement(self) -> str:
        d = METRIC_DIRECTION[self.metric]
        if self.rule == "best_with_ci":
            return (
                f"within each cell, the arm with the {'lowest' if d == 'lower' else 'highest'} "
                f"{self.labels}-label {self.metric} on {self.split} among arms whose paired "
                "patient-bootstrap CI of the difference vs the baseline excludes 0 in the improving "
                "direction; if none, the baseline"
            )
        gap = "arm − best" if d == "lower" else "best − arm"
        return (
            f"paired one-standard-error rule on {self.labels}-label {self.metric} ({self.split} split), per "
            f"cell: the best arm has the {'lowest' if d == 'lower' else 'highest'} {self.metric}; every other "
            "arm is joined with it on (patient_id, year) and one patient-cluster bootstrap (patients resampled "
            f"once per replicate, applied to both arms) gives the SE of their paired difference; an arm is "
            f"eligible when ({gap}) ≤ that SE; the winner is the first eligible arm in the listed "
            "(simplest-first) order"
        )


class SuiteSpec(_Strict):
    """A suite file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base_config: str | None = None
    base_overrides: list[str] = Field(default_factory=list)
    matrix: list[CellSpec] = Field(default_factory=list)
    runs: list[ArmSpec] = Field(min_length=1)
    baseline: str
    winner: WinnerRule = Field(default_factory=WinnerRule)

    @model_validator(mode="after")
    def _consistent(self) -> SuiteSpec:
        arms = [a.name for a in self.runs]
        if len(set(arms)) != len(arms):
            raise ValueError("runs: arm names must be unique")
        if self.baseline not in arms:
            raise ValueError(f"baseline: {self.baseline!r} is not one of the runs {arms}")
        cells = [c.name for c in self.matrix]
        if len(set(cells)) != len(cells):
            raise ValueError("matrix: cell names must be unique")
        for a in self.runs:
            bad = set(a.cell_overrides) - set(cells)
            if bad:
                raise ValueError(f"runs.{a.name}.cell_overrides: unknown cell(s) {sorted(bad)}")
        return self


def load_suite(path: str | Path) -> SuiteSpec:
    """Parse and validate a suite YAML; errors name the file and key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"suite file {p}: not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"suite file {p}: not valid YAML ({exc})") from None
    try:
        return SuiteSpec.model_validate(data)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"suite file {p}: {msgs}") from None


def resolve_base_config(suite: SuiteSpec, suite_path: Path) -> Path | None:
    """The base config path: as given if it exists from the cwd, else relative to the suite file."""
    if suite.base_config is None:
        return None
    p = Path(suite.base_config)
    if p.is_file():
        return p
    q = Path(suite_path).parent / p
    if q.is_file():
        return q
    raise ConfigError(f"suite {suite.name}: base_config {suite.base_config} not found")


def expand_runs(suite: SuiteSpec, extra_overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """One entry per (arm, cell) with its full override list, baseline and complexity order."""
    cells = suite.matrix or [CellSpec.model_construct(name="", overrides=[])]
    out: list[dict[str, Any]] = []
    for cell in cells:
        for order, arm in enumerate(suite.runs):
            full = f"{arm.name}@{cell.name}" if cell.name else arm.name
            base = f"{suite.baseline}@{cell.name}" if cell.name else suite.baseline
            out.append(
                {
                    "name": full,
                    "arm": arm.name,
                    "cell": cell.name or None,
                    "order": order,
                    "baseline": base,
                    "is_baseline": full == base,
                    "key_change": arm.key_change,
                    "overrides": [
                        *suite.base_overrides,
                        *cell.overrides,
                        *arm.overrides,
                        *arm.cell_overrides.get(cell.name, []),
                        *(extra_overrides or []),
                    ],
                }
            )
    return out


def _slug(text: str) -> str:
    return _SAFE.sub("-", text).strip("-") or "run"


def experiments_config(cfg: Any) -> ExperimentsConfig:
    """The ``experiments`` config section, or defaults while it is not mounted in ClinriskConfig."""
    ec = getattr(cfg, "experiments", None)
    return ec if isinstance(ec, ExperimentsConfig) else ExperimentsConfig()


# ------------------------------------------------------------------------------------------- running


def _find_one(root: Path, pattern: str) -> Path | None:
    hits = sorted(root.glob(pattern))
    return hits[0] if hits else None


def locate_outputs(pipeline_dir: Path) -> dict[str, str | None]:
    """Where a kfp.local run left its evaluation, bundle, features and selection artifacts."""
    root = Path(pipeline_dir)

    def parent_of(pattern: str) -> str | None:
        f = _find_one(root, pattern)
        return str(f.parent) if f is not None else None

    ev = parent_of("*/*/predictions.parquet")
    return {
        "evaluation_dir": ev,
        "predictions": str(Path(ev) / "predictions.parquet") if ev else None,
        "bundle_dir": parent_of("*/*/model.txt"),
        # the merged features dataset: a feature_spec.json next to shard=NNN directories (the spec-fitting
        # step also writes a bare feature_spec.json)
        "features_dir": next(
            (
                str(f.parent)
                for f in sorted(root.glob("*/*/feature_spec.json"))
                if any(f.parent.glob("shard=*"))
            ),
            None,
        ),
        "selection_file": str(f) if (f := _find_one(root, "*/*/selected_features.json")) else None,
    }


def _mlflow_run_of(model_uri: str, tracking_uri: str) -> str | None:
    """Run id behind ``models:/name/version`` (None when it cannot be resolved)."""
    m = re.match(r"^models:/([^/@]+)/(\d+)$", model_uri or "")
    if not m:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return str(MlflowClient(tracking_uri).get_model_version(m.group(1), m.group(2)).run_id)
    except MlflowException:
        return None


def _prepare_tracking(suite_dir: Path, experiment: str) -> str:
    """Suite-wide sqlite MLflow store whose experiment keeps artifacts inside the suite directory."""
    from mlflow.tracking import MlflowClient

    db = (suite_dir / "mlflow").resolve()
    db.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{db / 'mlflow.db'}"
    client = MlflowClient(uri)
    if client.get_experiment_by_name(experiment) is None:
        art = db / "artifacts"
        art.mkdir(exist_ok=True)
        client.create_experiment(experiment, artifact_location=art.as_uri())
    return uri


def _peak_rss(selection_file: str | None) -> float | None:
    if not selection_file:
        return None
    res = read_json(Path(selection_file)).get("resources") or {}
    v = res.get("peak_rss_mb")
    return float(v) if isinstance(v, int | float) else None


def run_suite(
    suite_path: str | Path,
    runner: str = "local",
    extra_overrides: list[str] | None = None,
    *,
    kfp_host: str | None = None,
    out_dir: Path | None = None,
    only: list[str] | None = None,
    kfp_timeout_s: int = 6 * 3600,
    resume: bool = False,
    data_cache: bool = True,
) -> dict[str, Any]:
    """Run every (arm, cell) of a suite through the pipeline; writes and returns ``suite_result.json``.

    ``runner``: ``local`` (kfp.local subprocess), ``docker`` (kfp.local DockerRunner) — or ``kfp_host``
    to submit to Kubeflow Pipelines and wait. ``only`` restricts to some run names (baselines are added).
    ``resume``: keep the runs of an existing ``suite_result.json`` in the suite directory that finished
    ``ok`` with identical effective overrides and whose predictions still exist; run only the others.
    ``data_cache`` (local runners): arms whose generate/validate sections and seed match reuse the first
    such arm's generated+validated data (``experiments.data_cache_dir`` = ``<suite>/data_cache``; a
    caller's ``--set experiments.data_cache_dir=null`` turns it off). Each run records ``wall_s`` and,
    when it reused data, the source run (also as MLflow tags ``clinrisk.data_reused_from``/``…_key``).
    """
    from clinrisk.config import load_config

    suite_path = Path(suite_path)
    suite = load_suite(suite_path)
    base = resolve_base_config(suite, suite_path)
    extra = list(extra_overrides or [])
    probe = load_config(base, [*suite.base_overrides, *extra])
    ec = experiments_config(probe)
    suite_dir = Path(out_dir) if out_dir is not None else Path(ec.output_dir) / suite.name
    suite_dir = suite_dir.resolve()
    suite_dir.mkdir(parents=True, exist_ok=True)
    runs = expand_runs(suite, extra)
    if only:
        wanted = set(only) | {r["baseline"] for r in runs if r["name"] in only}
        unknown = set(only) - {r["name"] for r in runs}
        if unknown:
            raise ConfigError(f"--only: unknown run(s) {sorted(unknown)}")
        runs = [r for r in runs if r["name"] in wanted]
    user_tracking = any(o.startswith("tracking.tracking_uri=") for o in extra)
    experiment = f"suite-{suite.name}"
    tracking_uri = None if (user_tracking or kfp_host) else _prepare_tracking(suite_dir, experiment)
    result: dict[str, Any] = {
        "suite": suite.model_dump(mode="json"),
        "suite_file": str(suite_path),
        "base_config": str(base) if base else None,
        "extra_overrides": extra,
        "suite_dir": str(suite_dir),
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "p_t": probe.threshold.threshold_probability,
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": [],
    }
    previous = reusable_runs(suite_dir / SUITE_RESULT) if resume else {}
    for r in runs:
        run_name = _slug(f"{suite.name}-{r['arm']}" + (f"-{r['cell']}" if r["cell"] else ""))
        # before the arm's and caller's overrides, so an explicit --set experiments.data_cache_dir wins
        cache = (
            [f"experiments.data_cache_dir={suite_dir / 'data_cache'}"] if data_cache and not kfp_host else []
        )
        ov = [
            *cache,
            *r["overrides"],
            f"run.name={run_name}",
            f"run.output_dir={suite_dir / 'runs'}",
            f"tracking.experiment_name={experiment}",
        ]
        if tracking_uri:
            ov.append(f"tracking.tracking_uri={tracking_uri}")
        entry = {**r, "run_name": run_name, "effective_overrides": ov}
        old = previous.get(r["name"])
        if old is not None and old.get("effective_overrides") == ov:
            result["runs"].append({**old, "resumed": True})
            write_json(suite_dir / SUITE_RESULT, result)
            continue
        try:
            load_config(base, ov)  # fail fast on a bad override, before any compute
            t0 = time.perf_counter()
            if kfp_host:
                entry.update(_run_on_kfp(kfp_host, base, ov, run_name, experiment, kfp_timeout_s))
            else:
                entry.update(_run_locally(base, ov, runner))
            entry["wall_s"] = round(time.perf_counter() - t0, 1)
            entry["status"] = "ok"
        except Exception as exc:
            if not ec.continue_on_error or isinstance(exc, ConfigError):
                raise
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        result["runs"].append(entry)
        write_json(suite_dir / SUITE_RESULT, result)  # progress survives an interruption
    result["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(suite_dir / SUITE_RESULT, result)
    return result


def reusable_runs(path: Path) -> dict[str, dict[str, Any]]:
    """Runs of an earlier ``suite_result.json`` that finished ok and still have their predictions."""
    if not Path(path).is_file():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for e in read_json(Path(path)).get("runs") or []:
        if e.get("status") == "ok" and e.get("predictions") and Path(e["predictions"]).is_file():
            out[str(e["name"])] = dict(e)
    return out


def _run_locally(base: Path | None, overrides: list[str], runner: str) -> dict[str, Any]:
    from clinrisk.pipeline_runner import run_local

    kind = {"local": "subprocess", "subprocess": "subprocess", "docker": "docker"}.get(runner)
    if kind is None:
        raise ConfigError(f"--runner: unknown runner {runner!r} (local or docker)")
    res = run_local(base, overrides, runner=kind)  # type: ignore[arg-type]
    out: dict[str, Any] = {
        "pipeline_dir": str(res.pipeline_dir),
        "model_uri": res.model_uri,
        "tracking_uri": res.tracking_uri,
        **locate_outputs(res.pipeline_dir),
    }
    out["mlflow_run_id"] = _mlflow_run_of(res.model_uri, res.tracking_uri)
    out["peak_rss_mb"] = _peak_rss(out.get("selection_file"))
    out["data_cache"] = data_cache_info(res.pipeline_dir)
    if out["data_cache"] and out["mlflow_run_id"]:
        tag_data_reuse(res.tracking_uri, out["mlflow_run_id"], out["data_cache"])
    return out


def data_cache_info(pipeline_dir: Path) -> dict[str, Any] | None:
    """The run's data-cache block from its plan (key, and the source run when it reused data)."""
    plan = _find_one(Path(pipeline_dir), "*/*/plan.json")
    if plan is None:
        return None
    dc = read_json(plan).get("data_cache")
    return dict(dc) if isinstance(dc, dict) else None


def tag_data_reuse(tracking_uri: str, run_id: str, info: dict[str, Any]) -> None:
    """Record on the MLflow run whether its data was reused, from which run, under which cache key."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    client.set_tag(run_id, "clinrisk.data_cache_key", str(info.get("key") or ""))
    client.set_tag(run_id, "clinrisk.data_reused_from", str(info.get("reused_from") or "none (generated)"))
    if info.get("reused_from"):
        client.set_tag(run_id, "clinrisk.data_reused_dir", str(info.get("validated_dir") or ""))


def _run_on_kfp(
    host: str, base: Path | None, overrides: list[str], run_name: str, experiment: str, timeout_s: int
) -> dict[str, Any]:
    """Submit, wait, then fetch the run's evaluation artifacts from MLflow (tagged with the KFP run id)."""
    import kfp
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    from clinrisk.config import load_config
    from clinrisk.pipeline_runner import submit_pipeline
    from clinrisk.tracking import tracking_uri as cfg_tracking_uri

    run_id = submit_pipeline(host, base, overrides, experiment=experiment, run_name=run_name)
    detail = kfp.Client(host=host).wait_for_run_completion(run_id, timeout=timeout_s)
    state = str(getattr(detail, "state", "") or "")
    if state.upper() not in ("SUCCEEDED", ""):
        raise DataError(f"KFP run {run_id}: finished in state {state}")
    cfg = load_config(base, overrides)
    uri = cfg_tracking_uri(cfg)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    found = client.search_runs([exp.experiment_id], f"tags.`kfp.run_id` = '{run_id}'") if exp else []
    out: dict[str, Any] = {"kfp_run_id": run_id, "tracking_uri": uri}
    if found:
        mrun = found[0].info.run_id
        dest = Path(cfg.run.output_dir) / cfg.run.name / "evaluation"
        local = mlflow.artifacts.download_artifacts(
            run_id=mrun, artifact_path="evaluation", dst_path=str(dest.parent), tracking_uri=uri
        )
        out.update(
            mlflow_run_id=mrun,
            evaluation_dir=local,
            predictions=str(Path(local) / "predictions.parquet"),
        )
    return out


# ----------------------------------------------------------------------------------------- comparing


def _read_predictions(path: str | Path) -> pl.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: predictions file not found")
    df = pl.read_parquet(p)
    need = ["patient_id", "year", "probability", "label_rec", "eval_label_true"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{p}: predictions lack column(s) {missing}")
    return df


def _validation_predictions(entry: dict[str, Any]) -> pl.DataFrame:
    """Score the run's validation split with its bundle (for rules on the validation split)."""
    from clinrisk.bundle import load_bundle
    from clinrisk.evaluate import load_test_frame

    where = dict(entry)
    if entry.get("pipeline_dir") and Path(entry["pipeline_dir"]).is_dir():
        where.update(
            locate_outputs(Path(entry["pipeline_dir"]))
        )  # re-located: older results recorded wrong dirs
    if not where.get("bundle_dir") or not where.get("features_dir"):
        raise DataError(f"run {entry['name']}: bundle/features not available locally for validation scoring")
    bundle = load_bundle(Path(where["bundle_dir"]))
    df = load_test_frame(Path(where["features_dir"]), split="validation")
    p = np.asarray(bundle.predict_proba(df), dtype=np.float64)
    return pl.DataFrame(
        {
            "patient_id": df["patient_id"],
            "year": df["year"],
            "probability": p,
            "label_rec": df["label_rec"].cast(pl.Int8),
            "eval_label_true": df["eval_label_true"].cast(pl.Int8),
            "eval_oracle_risk": df["eval_oracle_risk"].cast(pl.Float64),
        }
    )


def point_metrics(df: pl.DataFrame, p_t: float) -> dict[str, dict[str, float]]:
    """Brier, AP, NB@p_t, AUC, log-loss, O/E, calibration slope vs true and recorded labels
    (+ excess Brier vs the oracle risk when the predictions carry ``eval_oracle_risk``)."""
    from clinrisk import metrics as M

    p = df["probability"].cast(pl.Float64).to_numpy()
    po = df["eval_oracle_risk"].cast(pl.Float64).to_numpy() if "eval_oracle_risk" in df.columns else None
    out: dict[str, dict[str, float]] = {}
    for lab, col in LABEL_COLUMNS.items():
        y = df[col].cast(pl.Float64).to_numpy()
        panel = M.metric_panel(y, p, tau=p_t, p_t=p_t, p_oracle=po)
        keep = ["brier", "ap", "net_benefit", "auc", "log_loss", "oe", "cal_slope", "prevalence"]
        if po is not None:
            keep.append("excess_brier")
        out[lab] = {k: float(panel[k][0]) for k in keep}
    return out


def paired_deltas(
    base: pl.DataFrame, run: pl.DataFrame, p_t: float, n_boot: int, seed: int, alpha: float
) -> dict[str, Any]:
    """Paired patient-cluster bootstrap of run − baseline on the rows both scored (join on patient, year)."""
    from clinrisk import metrics as M

    keys = ["patient_id", "year"]
    cols = ["probability", "label_rec", "eval_label_true"]
    j = (
        base.select([*keys, *cols])
        .join(run.select([*keys, *cols]), on=keys, how="inner", suffix="_run")
        .sort(keys)
    )
    info: dict[str, Any] = {
        "n_common_rows": j.height,
        "n_baseline_rows": base.height,
        "n_run_rows": run.height,
    }
    if j.height == 0:
        info["error"] = "no common (patient_id, year) rows: runs are on different data"
        return info
    for col in LABEL_COLUMNS.values():
        if not (j[col] == j[f"{col}_run"]).all():
            info["error"] = (
                f"{col} differs between the runs on common rows: different data/labels, so no paired "
                "comparison (compare arms within the same cell)"
            )
            return info
    pa = j["probability"].cast(pl.Float64).to_numpy()
    pb = j["probability_run"].cast(pl.Float64).to_numpy()
    g = j["patient_id"].to_numpy()
    for lab, col in LABEL_COLUMNS.items():
        y = j[col].cast(pl.Float64).to_numpy()
        d = M.paired_bootstrap_diff(y, pa, pb, g, tau=p_t, p_t=p_t, n_boot=n_boot, seed=seed, alpha=alpha)
        info[lab] = {k: d[k] for k in TABLE_METRICS if k in d}
    return info


def selection_summary(selection_file: str | None) -> dict[str, Any] | None:
    """The selection step's own numbers for a run (None when selection was disabled or is unavailable):
    feature counts, its validation ΔAP/ΔBrier vs the full set, and whether training used the selection
    (only when it passed its non-inferiority check; otherwise training falls back to all features)."""
    if not selection_file or not Path(selection_file).is_file():
        return None
    doc = read_json(Path(selection_file))
    if not doc.get("enabled", True) or "evaluation" not in doc:
        return None
    ev = doc.get("evaluation") or {}
    res = doc.get("resources") or {}
    return {
        "n_features_before": doc.get("n_features_before"),
        "n_features_selected": doc.get("n_features_selected"),
        "validation_delta_ap": ev.get("delta_ap"),
        "validation_delta_brier": ev.get("delta_brier"),
        "validation_rows": ev.get("validation_rows"),
        "acceptable": ev.get("acceptable"),
        "used_for_training": ev.get("acceptable") is not False,
        "peak_rss_mb": res.get("peak_rss_mb"),
        "wall_s": res.get("wall_s"),
    }


def _improves(metric: str, delta: dict[str, float]) -> bool:
    """The paired CI excludes 0 on the improving side."""
    if METRIC_DIRECTION[metric] == "lower":
        return bool(delta["hi"] < 0)
    return bool(delta["lo"] > 0)


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if METRIC_DIRECTION[metric] == "lower" else a > b


def choose_winner(rows: list[dict[str, Any]], rule: WinnerRule) -> list[dict[str, Any]]:
    """Apply a ``best_with_ci`` rule per cell to comparison rows; returns one verdict per cell."""
    verdicts = []
    cells: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault(r.get("cell"), []).append(r)
    for cell, rs in cells.items():
        base = next((r for r in rs if r["is_baseline"]), None)
        cands = []
        for r in rs:
            if r["is_baseline"] or r.get("status") != "ok":
                continue
            d = ((r.get("delta") or {}).get(rule.labels) or {}).get(rule.metric)
            if d and math.isfinite(d["lo"]) and _improves(rule.metric, d):
                cands.append(r)
        if cands:
            best = cands[0]
            for r in cands[1:]:
                if _better(
                    rule.metric,
                    r["metrics"][rule.labels][rule.metric],
                    best["metrics"][rule.labels][rule.metric],
                ):
                    best = r
            why = (
                f"{best['name']}: {rule.labels}-label {rule.metric} "
                f"{best['metrics'][rule.labels][rule.metric]:.5f}, paired Δ vs baseline "
                f"{best['delta'][rule.labels][rule.metric]['diff']:+.5f} "
                f"[{best['delta'][rule.labels][rule.metric]['lo']:+.5f}, "
                f"{best['delta'][rule.labels][rule.metric]['hi']:+.5f}]"
            )
            verdicts.append({"cell": cell, "winner": best["name"], "reason": why})
        else:
            verdicts.append(
                {
                    "cell": cell,
                    "winner": base["name"] if base else None,
                    "reason": "no arm's paired CI excludes 0 in the improving direction: baseline kept",
                }
            )
    return verdicts


def _paired_join(
    best: pl.DataFrame, arm: pl.DataFrame, label_col: str, names: tuple[str, str]
) -> pl.DataFrame:
    """Rows both arms scored, joined on (patient_id, year); errors when none or when labels disagree."""
    keys = ["patient_id", "year"]
    cols = [*keys, "probability", label_col]
    j = best.select(cols).join(arm.select(cols), on=keys, how="inner", suffix="_arm").sort(keys)
    if j.height == 0:
        raise DataError(
            f"one_se rule: arms {names[0]} and {names[1]} share no (patient_id, year) rows; "
            "a paired SE needs both arms scored on the same patients"
        )
    if not (j[label_col] == j[f"{label_col}_arm"]).all():
        raise DataError(
            f"one_se rule: {label_col} differs between arms {names[0]} and {names[1]} on common rows "
            "(different data), so no paired comparison"
        )
    return j


def one_se_winner(
    frames: dict[str, pl.DataFrame], order: list[str], rule: WinnerRule, p_t: float, n_boot: int, seed: int
) -> dict[str, Any]:
    """Paired one-SE rule: the first arm in ``order`` whose gap to the best arm is within one SE of the
    paired difference.

    Best = best point metric (each arm on its own rows). For every other arm, both arms' predictions are
    joined on (patient_id, year) and one patient-cluster bootstrap (patients resampled once per replicate,
    applied to both arms) gives the difference arm − best and its SE. The gap is best − arm (arm − best for
    lower-is-better metrics); an arm is eligible when gap ≤ SE. The single-arm (unpaired) SE is kept in
    ``per_run`` for comparison only.
    """
    from clinrisk import metrics as M

    if not order:
        raise DataError("one_se rule: no arms to choose from")
    col = LABEL_COLUMNS[rule.labels]
    lower = METRIC_DIRECTION[rule.metric] == "lower"
    stats: dict[str, dict[str, Any]] = {}
    for name in order:
        df = frames[name]
        y = df[col].cast(pl.Float64).to_numpy()
        p = df["probability"].cast(pl.Float64).to_numpy()
        b = M.bootstrap_panel(y, p, df["patient_id"].to_numpy(), tau=p_t, p_t=p_t, n_boot=n_boot, seed=seed)
        stats[name] = {
            "value": b[rule.metric]["value"],
            "se_unpaired": b[rule.metric]["se"],
            "n_rows": df.height,
        }
    best = order[0]
    for name in order[1:]:
        if _better(rule.metric, stats[name]["value"], stats[best]["value"]):
            best = name
    for name in order:
        s = stats[name]
        if name == best:
            s.update(diff_vs_best=0.0, gap=0.0, se_paired=0.0, n_paired_rows=s["n_rows"], eligible=True)
            continue
        j = _paired_join(frames[best], frames[name], col, (best, name))
        d = M.paired_bootstrap_diff(
            j[col].cast(pl.Float64).to_numpy(),
            j["probability"].cast(pl.Float64).to_numpy(),
            j["probability_arm"].cast(pl.Float64).to_numpy(),
            j["patient_id"].to_numpy(),
            tau=p_t,
            p_t=p_t,
            n_boot=n_boot,
            seed=seed,
        )[rule.metric]
        diff, se = float(d["diff"]), float(d["se"])  # arm − best on the paired rows
        gap = diff if lower else -diff
        s.update(
            diff_vs_best=diff,
            gap=gap,
            se_paired=se,
            n_paired_rows=j.height,
            eligible=bool(math.isfinite(gap) and math.isfinite(se) and gap <= se),
        )
    winner = next(n for n in order if stats[n]["eligible"])
    w = stats[winner]
    return {
        "cell": None,
        "winner": winner,
        "best": best,
        "best_value": stats[best]["value"],
        "per_run": stats,
        "reason": (
            f"best {best} ({rule.metric} {stats[best]['value']:.5f}); first arm in order within one paired SE "
            f"of it is {winner} ({rule.metric} {w['value']:.5f}, paired Δ vs best {w['diff_vs_best']:+.5f}, "
            f"SE {w['se_paired']:.5f}, {w['n_paired_rows']} paired rows)"
        ),
    }


def compare_runs(
    suite_result: dict[str, Any] | str | Path,
    out_dir: Path | None = None,
    *,
    n_boot: int | None = None,
    seed: int = 0,
    ci_level: float = 0.95,
) -> dict[str, Any]:
    """Comparison report of a suite result (dict or path to ``suite_result.json``): writes
    ``comparison.json`` and ``comparison.md`` into ``out_dir`` (default: the suite directory)."""
    res: dict[str, Any] = (
        suite_result if isinstance(suite_result, dict) else dict(read_json(Path(suite_result)))
    )
    suite = SuiteSpec.model_validate(res["suite"])
    rule = suite.winner
    p_t = float(res.get("p_t") or 0.10)
    B = int(n_boot or 200)
    alpha = 1.0 - ci_level
    entries = res["runs"]
    frames: dict[str, pl.DataFrame] = {}
    rows: list[dict[str, Any]] = []
    for e in entries:
        row: dict[str, Any] = {
            k: e.get(k)
            for k in (
                "name",
                "arm",
                "cell",
                "order",
                "baseline",
                "is_baseline",
                "key_change",
                "status",
                "mlflow_run_id",
                "tracking_uri",
                "model_uri",
                "pipeline_dir",
                "peak_rss_mb",
                "error",
            )
        }
        row["mlflow_run_uri"] = f"runs:/{e['mlflow_run_id']}" if e.get("mlflow_run_id") else None
        row["selection"] = selection_summary(e.get("selection_file"))
        if e.get("status") == "ok":
            try:
                frames[e["name"]] = _read_predictions(e["predictions"])
                row["metrics"] = point_metrics(frames[e["name"]], p_t)
                row["n_test_rows"] = frames[e["name"]].height
            except (DataError, KeyError, TypeError) as exc:
                row["status"] = "failed"
                row["error"] = f"predictions unusable: {exc}"
        rows.append(row)
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        if r.get("status") != "ok" or r["is_baseline"]:
            continue
        b = by_name.get(r["baseline"])
        if b is None or b.get("status") != "ok":
            r["delta"] = {"error": f"baseline {r['baseline']} unavailable"}
            continue
        r["delta"] = paired_deltas(frames[b["name"]], frames[r["name"]], p_t, B, seed, alpha)
    ok = [r for r in rows if r.get("status") == "ok"]
    if rule.rule == "best_with_ci":
        winners = choose_winner(rows, rule)
    elif not ok:
        winners = []
    else:
        winners = []
        cells_ok: dict[Any, list[dict[str, Any]]] = {}
        for r in sorted(ok, key=lambda r: (r.get("cell") or "", r["order"])):
            cells_ok.setdefault(r.get("cell"), []).append(r)
        for cell, rs in cells_ok.items():
            order = [r["name"] for r in rs]
            if rule.split == "validation":
                val = {n: _validation_predictions(next(e for e in entries if e["name"] == n)) for n in order}
            else:
                val = {n: frames[n] for n in order}
            winners.append({**one_se_winner(val, order, rule, p_t, B, seed), "cell": cell})
    report = {
        "suite": suite.name,
        "description": suite.description,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "p_t": p_t,
        "bootstrap_replicates": B,
        "ci_level": ci_level,
        "winner_rule": {**rule.model_dump(), "statement": rule.statement()},
        "winners": winners,
        "tracking_uri": res.get("tracking_uri"),
        "experiment": res.get("experiment"),
        "runs": rows,
    }
    dest = Path(out_dir) if out_dir is not None else Path(res.get("suite_dir") or ".")

    write_json(dest / COMPARISON_JSON, json_safe(report))
    markdown = render_comparison(report)
    (dest / COMPARISON_MD).write_text(markdown)
    (dest / COMPARISON_HTML).write_text(markdown_to_html(markdown, f"clinrisk experiment suite {suite.name}"))
    report["files"] = {
        "json": str(dest / COMPARISON_JSON),
        "markdown": str(dest / COMPARISON_MD),
        "html": str(dest / COMPARISON_HTML),
    }
    report["mlflow_comparison_run_id"] = log_comparison(report, dest)
    return report


def log_comparison(report: dict[str, Any], dest: Path) -> str | None:
    """Log the comparison (JSON, Markdown, HTML) as its own finished MLflow run in the suite's experiment, so
    users find it beside the runs it compares; None when the suite tracked into no store we know."""
    uri, name = report.get("tracking_uri"), report.get("experiment")
    if not uri or not name:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=str(uri))
    experiment = client.get_experiment_by_name(str(name))
    if experiment is None:
        return None
    run = client.create_run(
        experiment.experiment_id,
        run_name=f"comparison-{report['suite']}",
        tags={"clinrisk.kind": "experiment-comparison", "mlflow.note.content": _headline(report)},
    )
    for file in (COMPARISON_JSON, COMPARISON_MD, COMPARISON_HTML):
        client.log_artifact(run.info.run_id, str(dest / file), "comparison")
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def _headline(report: dict[str, Any]) -> str:
    winners = ", ".join(str(w.get("winner") or "none") for w in report.get("winners") or [])
    return (
        f"Experiment suite `{report['suite']}`: {len(report['runs'])} runs; winner(s): {winners or 'none'}."
    )


def _fmt(x: Any, spec: str = ".4f") -> str:
    return format(x, spec) if isinstance(x, int | float) and math.isfinite(float(x)) else "–"


def render_comparison(report: dict[str, Any]) -> str:
    """Markdown: metrics table, paired deltas with CIs, the winner rule and verdict, MLflow links."""
    lines = [
        f"# Experiment suite `{report['suite']}`",
        "",
        report.get("description") or "",
        "",
        f"Net benefit at p_t = {report['p_t']:g}; paired patient-cluster bootstrap, B = "
        f"{report['bootstrap_replicates']}, {report['ci_level']:.0%} percentile intervals; deltas are "
        "run − baseline on the (patient_id, year) rows both scored.",
        "",
        "## Metrics (test split)",
        "",
        "| run | key change | true Brier | true AP | true NB | true AUC | rec Brier | rec AP | rec NB | "
        "rec AUC | peak RSS MB | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        m = r.get("metrics") or {}
        t, rc = m.get("true", {}), m.get("recorded", {})
        lines.append(
            f"| {r['name']}{' (baseline)' if r['is_baseline'] else ''} | {r.get('key_change') or ''} | "
            + " | ".join(_fmt(t.get(k)) for k in TABLE_METRICS)
            + " | "
            + " | ".join(_fmt(rc.get(k)) for k in TABLE_METRICS)
            + f" | {_fmt(r.get('peak_rss_mb'), '.0f')} | {r.get('status')} |"
        )
    lines += [
        "",
        "## Paired deltas vs baseline",
        "",
        "| run | baseline | labels | ΔBrier [CI] | ΔAP [CI] | ΔNB [CI] | ΔAUC [CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        d = r.get("delta")
        if not d:
            continue
        if "error" in d:
            lines.append(f"| {r['name']} | {r['baseline']} | – | {d['error']} | | | |")
            continue
        for lab in ("true", "recorded"):
            cells = []
            for k in TABLE_METRICS:
                v = d[lab].get(k)
                cells.append(
                    f"{_fmt(v['diff'], '+.4f')} [{_fmt(v['lo'], '+.4f')}, {_fmt(v['hi'], '+.4f')}]"
                    if v
                    else "–"
                )
            lines.append(f"| {r['name']} | {r['baseline']} | {lab} | " + " | ".join(cells) + " |")
    sel = [r for r in report["runs"] if r.get("selection")]
    if sel:
        lines += [
            "",
            "## Feature selection step (its own validation check vs the full set)",
            "",
            "Training uses the selected set only if it passed the non-inferiority check (ΔAP ≥ −0.005 and "
            "ΔBrier ≤ +0.0005); otherwise it falls back to all features, and the test metrics above are "
            "those of the full set.",
            "",
            "| run | features before → selected | validation ΔAP | validation ΔBrier | validation rows | "
            "passed | used for training | peak RSS MB | wall s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sel:
            x = r["selection"]
            lines.append(
                f"| {r['name']} | {x['n_features_before']} → {x['n_features_selected']} | "
                f"{_fmt(x['validation_delta_ap'], '+.4f')} | {_fmt(x['validation_delta_brier'], '+.5f')} | "
                f"{x.get('validation_rows') or '–'} | {x['acceptable']} | {x['used_for_training']} | "
                f"{_fmt(x['peak_rss_mb'], '.0f')} | {_fmt(x['wall_s'], '.1f')} |"
            )
    lines += ["", "## Winner", "", f"Rule: {report['winner_rule']['statement']}.", ""]
    for w in report["winners"]:
        cell = f" (cell `{w['cell']}`)" if w.get("cell") else ""
        lines.append(f"- **{w['winner']}**{cell}: {w['reason']}")
    for w in report["winners"]:
        if "per_run" not in w or not any("se_paired" in v for v in w["per_run"].values()):
            continue
        rw = report["winner_rule"]
        lines += [
            "",
            f"One-SE rule detail{' (cell `' + w['cell'] + '`)' if w.get('cell') else ''}: "
            f"{rw['labels']}-label {rw['metric']} on the {rw['split']} split; Δ = arm − best "
            f"({w['best']}) on the paired rows; unpaired SE = the arm's own bootstrap SE, for comparison.",
            "",
            f"| arm | {rw['metric']} | Δ vs best | paired SE | eligible | paired rows | unpaired SE |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, v in w["per_run"].items():
            mark = " (best)" if name == w["best"] else ""
            win = " **winner**" if name == w["winner"] else ""
            lines.append(
                f"| {name}{mark}{win} | {_fmt(v['value'], '.5f')} | {_fmt(v.get('diff_vs_best'), '+.5f')} | "
                f"{_fmt(v.get('se_paired'), '.5f')} | {'yes' if v.get('eligible') else 'no'} | "
                f"{v.get('n_paired_rows', '–')} | {_fmt(v.get('se_unpaired'), '.5f')} |"
            )
    lines += ["", "## Links", ""]
    if report.get("tracking_uri"):
        lines.append(f"MLflow store `{report['tracking_uri']}`, experiment `{report.get('experiment')}`.")
        lines.append("")
    for r in report["runs"]:
        lines.append(
            f"- {r['name']}: MLflow run `{r.get('mlflow_run_id') or '–'}`, model `{r.get('model_uri') or '–'}`, "
            f"outputs `{r.get('pipeline_dir') or '–'}`"
            + (f" — error: {r['error']}" if r.get("error") else "")
        )
    return "\n".join(lines) + "\n"
