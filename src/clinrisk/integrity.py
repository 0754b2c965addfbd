"""Is a run root and its MLflow store consistent? ``check_store`` lists every problem (empty: consistent).

The checks, all read-only:

- no MLflow run is RUNNING unless a live runner holds the run root's lock;
- every registered model version that carries an alias is READY and has its tags;
- ``latest`` points at the pipeline folder of the last successful run (and exists only if one succeeded);
- no run record says ``running`` while no runner holds the lock (a runner that died and was not cleaned
  up after: the next run does that);
- no leftover temp folders (``.x.tmp-*``) in runs no runner is working on;
- no orphan processes: nothing started for this run root still lives once no runner holds the lock.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clinrisk import run_control as rc
from clinrisk.config import ClinriskConfig

# Tags register_bundle sets together with the alias; a version with an alias but without them is half-done.


def check_store(target: ClinriskConfig | str | Path) -> list[str]:
    """Problems of a config's run root, or of an output dir (each run root in it), or of one run root."""
    if isinstance(target, ClinriskConfig):
        from clinrisk.paths import RunPaths

        roots = [(RunPaths.for_config(target).root, target.tracking.tracking_uri)]
    else:
        roots = [(root, None) for root in run_roots(Path(target))]
    problems: list[str] = []
    for root, uri in roots:
        problems.extend(check_run_root(Path(root), uri))
    return problems


def run_roots(path: Path) -> list[Path]:
    """``path`` itself when it is a run root, else the run roots directly inside it."""
    if _is_run_root(path):
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and _is_run_root(p))


def _is_run_root(path: Path) -> bool:
    return any((path / name).exists() for name in (rc.RUNS_DIR, rc.LOCK_FILE, "mlflow", rc.LATEST))


def check_run_root(root: Path, tracking_uri: str | None = None) -> list[str]:
    root = root.resolve() if root.exists() else root
    if not root.is_dir():
        return []
    active = rc.is_locked(root / rc.LOCK_FILE)
    holder = (rc.lock_holder(root / rc.LOCK_FILE) or {}) if active else {}
    problems = [*_check_records(root, active, holder), *_check_latest(root)]
    if not active:
        problems.extend(_check_orphans(root))
    uri = tracking_uri or _default_store_uri(root)
    if uri is not None:
        problems.extend(_check_tracking(uri, active))
    return problems


def _default_store_uri(root: Path) -> str | None:
    db = root / "mlflow" / "mlflow.db"
    return f"sqlite:///{db}" if db.is_file() else None


def _check_records(root: Path, active: bool, holder: dict[str, Any]) -> list[str]:
    problems = []
    for doc in rc.run_records(root):
        rid = str(doc.get("run_id"))
        live = active and holder.get("run_id") == rid
        if doc.get("status") == rc.RUNNING and not live:
            problems.append(
                f"{root}: run {rid} is recorded running but no runner holds the lock "
                f"(pid {doc.get('pid')} died; the next run recovers it)"
            )
        if not live:
            left = rc.temp_dirs(rc.RunDirs(root, rid).dir)
            if left:
                problems.append(f"{root}: run {rid} left {len(left)} temp folder(s), e.g. {left[0]}")
    return problems


def _check_latest(root: Path) -> list[str]:
    succeeded = [d for d in rc.run_records(root) if d.get("status") == rc.SUCCEEDED]
    latest = root / rc.LATEST
    if not succeeded:
        if (latest.is_symlink() or latest.exists()) and rc.run_records(root):
            return [f"{latest}: exists but no run under {root / rc.RUNS_DIR} succeeded"]
        return []
    last = max(succeeded, key=lambda d: (str(d.get("finished", "")), str(d.get("run_id"))))
    if not latest.is_symlink():
        return [f"{latest}: missing; the last successful run is {last['run_id']}"]
    target = latest.resolve()
    if not target.is_dir():
        return [f"{latest}: points at {os.readlink(latest)}, which does not exist"]
    if target != Path(str(last.get("pipeline_dir", ""))).resolve():
        return [
            f"{latest}: points at {os.readlink(latest)}, not at the last successful run "
            f"{last['run_id']} ({last.get('pipeline_dir')})"
        ]
    return []


def _check_orphans(root: Path) -> list[str]:
    procs = rc.run_processes(root)
    out = []
    for proc in procs:
        try:
            desc = " ".join(proc.cmdline())[:120]
        except Exception:
            desc = "?"
        out.append(f"{root}: orphan process {proc.pid} of a finished run: {desc}")
    return out


def _check_tracking(uri: str, active: bool) -> list[str]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from clinrisk.registry import registry_problems

    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        problems = []
        if experiments and not active:
            for run in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'"):
                tag = run.data.tags.get("kfp.run_id", "?")
                problems.append(f"{uri}: MLflow run {run.info.run_id} (kfp.run_id {tag}) is still RUNNING")
        for model in client.search_registered_models():
            # The registry's own rules: aliased versions carry their tags, nothing left pending, one version
            # per bundle (clinrisk.registry owns what a consistent registered model is).
            problems += [f"{uri}: {p}" for p in registry_problems(client, model.name)]
            for alias, version in (model.aliases or {}).items():
                mv = client.get_model_version(model.name, str(version))
                if mv.status != "READY":
                    problems.append(f"{uri}: {model.name} v{version} (alias {alias}) is {mv.status}")
        return problems
    except MlflowException as exc:
        return [f"{uri}: cannot read the store ({str(exc).splitlines()[0][:200]})"]
