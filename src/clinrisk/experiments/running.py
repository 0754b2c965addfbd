"""Running a suite: every (arm, cell) through the pipeline (local kfp or a Kubeflow host), reading each run's
outputs back through the stage catalog, with resume and data-cache reuse."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clinrisk.errors import ConfigError, DataError
from clinrisk.experiments.suite import (
    SUITE_RESULT,
    expand_runs,
    experiments_config,
    load_suite,
    resolve_base_config,
    slug,
)
from clinrisk.experiments.units import check_rule, experiment_hooks
from clinrisk.io import read_json, write_json


def locate_outputs(pipeline_dir: Path) -> dict[str, str | None]:
    """Where a kfp.local run left its evaluation, bundle, features and selection artifacts: the stage
    catalog's binding of the DAG (:meth:`clinrisk.stages.catalog.Catalog.for_kfp_run`), each entry None when
    that artefact is not there (e.g. the run failed before it)."""
    from clinrisk.stages.catalog import Catalog

    io = Catalog.for_kfp_run(Path(pipeline_dir))

    def where(name: str) -> str | None:
        p = io.existing(name)
        return str(p) if p is not None else None

    return {
        "evaluation_dir": where("evaluation"),
        "predictions": where("predictions"),
        "bundle_dir": where("model_bundle"),
        "features_dir": where("features"),
        "selection_file": where("selection_file"),
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
    # A use case with its own experiment hooks runs each config its own way (e.g. segmentation's UNet).
    hooks = experiment_hooks(probe.run.usecase)
    if hooks is not None:
        check_rule(suite, probe.run.usecase, hooks)
        if kfp_host:
            raise ConfigError(f"--kfp-host: use case {probe.run.usecase} runs its experiments locally only")
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
    if hooks is not None:
        result["usecase"] = probe.run.usecase
    if hooks is not None:  # every arm's config is checked before the first one trains
        for r in runs:
            load_config(base, r["overrides"])
    previous = reusable_runs(suite_dir / SUITE_RESULT) if resume else {}
    for r in runs:
        run_name = slug(f"{suite.name}-{r['arm']}" + (f"-{r['cell']}" if r["cell"] else ""))
        # before the arm's and caller's overrides, so an explicit --set experiments.data_cache_dir wins
        cache = (
            [f"experiments.data_cache_dir={suite_dir / 'data_cache'}"]
            if data_cache and not kfp_host and hooks is None
            else []
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
            if hooks is not None:
                entry.update(hooks.run(base, ov, runner))
            elif kfp_host:
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
    from clinrisk.stages.catalog import Catalog

    plan = Catalog.for_kfp_run(Path(pipeline_dir)).existing("plan")
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
