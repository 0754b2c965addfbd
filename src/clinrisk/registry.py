"""Model registration: atomic, idempotent versions of a bundle as the clinrisk pyfunc model.

Kept apart from :mod:`clinrisk.tracking` because logging the model needs the serving side
(:mod:`clinrisk.mlflow_model`: its input example), which itself reaches tracking.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinrisk.errors import DataError
from clinrisk.tracking import (
    BUNDLE_ARTIFACT_KEY,
    CHALLENGER,
    MODEL_ARTIFACT,
    bundle_path_in_model,
    configure,
    error_line,
    mlflow_client,
    tracking_uri,
)

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig

# ------------------------------------------------------------------------------------------ registration
#
# A version is created WITH its tags in one call, marked ``clinrisk.state=pending`` and owned by this
# process (``clinrisk.registering=<host>:<pid>``); the alias is set next, and only then is the version
# marked ``registered``. A failure in between deletes the version and puts the alias back; a process killed
# in between leaves a pending version that :func:`reconcile_versions` (start of every registration, and the
# store checker) removes, or completes when the alias already points at it.

BUNDLE_TAG = "bundle_version"  # the bundle's content hash: an identical bundle reuses its version
DATA_HASH_TAG = "data_hash"
STATE_TAG = "clinrisk.state"
OWNER_TAG = "clinrisk.registering"
PENDING, REGISTERED = "pending", "registered"
REQUIRED_VERSION_TAGS = (BUNDLE_TAG, DATA_HASH_TAG)
# A pending version owned by a process on another host counts as abandoned after this long (registration
# itself takes seconds); on this host, as soon as its process is gone.
STALE_PENDING_S = 900


def register_bundle(
    cfg: ClinriskConfig,
    bundle_dir: Path,
    run_id: str,
    alias: str = CHALLENGER,
    run_dir: Path | None = None,
) -> str:
    """Register the bundle and point ``alias`` at it; returns the version number.

    A bundle whose content hash (``bundle_version``) is already registered reuses that version (the alias
    moves to it; nothing new is logged). Otherwise the bundle is logged as a pyfunc model in ``run_id`` and a
    new version appears with its tags and alias together, or not at all (see the block comment above).
    """
    from clinrisk.bundle import load_bundle

    bundle = load_bundle(bundle_dir)  # refuse to register an invalid bundle
    configure(cfg, run_dir)
    name = cfg.tracking.registered_model_name
    store = tracking_uri(cfg, run_dir)
    client = mlflow_client()
    created: str | None = None
    previous: str | None = None
    owner = _owner()
    creating = False
    try:
        reconcile_versions(client, name)
        existing = versions_with_bundle(client, name, bundle.version)
        if existing:
            version = existing[0]
            # Nothing is uploaded on reuse, so nothing else would notice a store that lost the version's
            # files or that this server cannot reach (wrong credentials, missing bucket).
            root = _version_artifact_location(client, name, version)
            check_stored_model(root, bundle, f"{name} v{version} holds this bundle, but ")
            client.set_registered_model_alias(name, alias, version)
            client.set_tag(run_id, "clinrisk.registered_version", version)
            client.set_tag(
                run_id, "clinrisk.registration", f"reused v{version} (same bundle {bundle.version})"
            )
            return version
        try:
            info = _log_pyfunc_model(bundle, run_id)
        except DataError:
            raise
        except Exception as exc:  # mostly an upload the server's object store refused
            where = _experiment_artifact_location(client, run_id) or store
            raise DataError(f"artifact store {where}: cannot log the model ({store_error(exc)})") from None
        try:
            check_stored_model(str(client.get_logged_model(info.model_id).artifact_location), bundle)
        except DataError:
            _fail_logged_model(client, info.model_id)
            raise
        _ensure_registered_model(client, name)
        previous = _alias_version(client, name, alias)
        tags = {
            BUNDLE_TAG: bundle.version,
            DATA_HASH_TAG: str(bundle.metadata.get("data_hash", "")),
            "clinrisk.run_name": cfg.run.name,
            "clinrisk.usecase": cfg.run.usecase,
            STATE_TAG: PENDING,
            OWNER_TAG: owner,
        }
        creating = True
        mv = client.create_model_version(
            name, source=info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id
        )
        created = str(mv.version)
        client.set_registered_model_alias(name, alias, created)
        client.set_model_version_tag(name, created, STATE_TAG, REGISTERED)
        client.delete_model_version_tag(name, created, OWNER_TAG)
        client.set_tag(run_id, "clinrisk.registered_version", created)
        client.set_tag(run_id, "clinrisk.registration", f"new v{created}")
        return created
    except BaseException as exc:
        if creating:
            # The create call may have succeeded before the failure (a lost response): find it by owner.
            mine = [created] if created is not None else _pending_versions_of(client, name, owner)
            for version in mine:
                _roll_back(client, name, version, alias, previous)
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt/SystemExit (signals) after the rollback
        raise DataError(f"{store}: cannot register {name} ({error_line(exc)})") from None


def _log_pyfunc_model(bundle: Any, run_id: str) -> Any:
    """Log the bundle as the clinrisk pyfunc model into the run (not registered); returns its ModelInfo.

    Models from code (MLflow's recommended form): the model is a two-line script naming
    :class:`clinrisk.mlflow_model.ClinriskPyfunc`, not a pickle, so loading it depends on no pickle format."""
    import logging
    import os
    import tempfile

    import mlflow
    import mlflow.pyfunc

    from clinrisk import mlflow_model

    with tempfile.TemporaryDirectory(prefix="clinrisk-pyfunc-") as tmp:
        script = Path(tmp) / "clinrisk_model.py"
        script.write_text(mlflow_model.MODEL_SCRIPT)
        pyfunc_log = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_log.level
        progress = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        try:
            # MLflow's notes (models-from-code, a progress bar while it checks the input example) are not ours.
            pyfunc_log.setLevel(logging.WARNING)
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
            with mlflow.start_run(run_id=run_id):
                return mlflow.pyfunc.log_model(
                    name=MODEL_ARTIFACT,
                    python_model=str(script),
                    artifacts={BUNDLE_ARTIFACT_KEY: str(Path(bundle.path).resolve())},
                    code_paths=[mlflow_model.code_path()],
                    signature=mlflow_model.signature(),
                    input_example=mlflow_model.input_example(bundle),
                    pip_requirements=mlflow_model.pip_requirements(),
                    metadata={
                        "bundle_version": bundle.version,
                        "usecase": str(bundle.spec.get("usecase", "")),
                    },
                )
        finally:
            pyfunc_log.setLevel(level)
            if progress is None:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
            else:
                os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = progress


def check_stored_model(root: str, bundle: Any, context: str = "") -> None:
    """Read the logged model at artifact location ``root`` back from the store: its MLmodel, and every file
    of ``bundle`` at the bundle path MLmodel names; raise a :class:`DataError` naming the store otherwise.

    A version is only worth registering when what serving downloads is there. This reads through the same
    path that deploy resolution and serving use (for a proxying server: the server, then its object store),
    so a store the server cannot write or read (wrong credentials, a missing bucket), or one that lost the
    files, fails here, before any version or alias changes.
    """
    import tempfile

    import mlflow.artifacts

    from clinrisk.bundle import METADATA_FILE, file_hashes

    where = f"artifact store {root}"
    try:
        with tempfile.TemporaryDirectory(prefix="clinrisk-stored-") as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/MLmodel", dst_path=tmp)
            mlmodel = Path(local).read_text()
        sub = bundle_path_in_model(mlmodel, where).strip("/")
        stored = {Path(f.path).name for f in mlflow.artifacts.list_artifacts(artifact_uri=f"{root}/{sub}")}
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{where}: {context}cannot read the model back ({store_error(exc)})") from None
    # The files that make the bundle (its content hash, and metadata.json that loading reads), not whatever
    # else lies in the local folder.
    needed = {*file_hashes(Path(bundle.path)), METADATA_FILE}
    missing = sorted(needed - stored)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise DataError(f"{where}: {context}the bundle's files are missing ({shown})")


def run_upload_error(
    cfg: ClinriskConfig, run_id: str, what: str, exc: BaseException, run_dir: Path | None = None
) -> DataError:
    """The error for a registration whose run could not upload ``what`` (its config, its reports): worded as
    a failed registration, naming the server and the artifact store, like a model upload the store refused."""
    store = tracking_uri(cfg, run_dir)
    where = _experiment_artifact_location(mlflow_client(), run_id) or store
    name = cfg.tracking.registered_model_name
    return DataError(
        f"{store}: cannot register {name} (artifact store {where}: cannot log {what} ({store_error(exc)}))"
    )


def store_error(exc: BaseException) -> str:
    """A store failure in a few words. Through a proxying server the client only sees the HTTP status after
    its retries, buried in a long retry message: the store's own error (S3's InvalidAccessKeyId, a missing
    bucket) stays in the server's log, or the server's worker died on it and a gateway answered 502. Anything
    else is its first line."""
    import re

    text = str(getattr(exc, "message", "") or exc)
    status = re.search(
        r"too many (\d{3}) error responses|[Rr]esponse code:? (\d{3})|\b(\d{3}) (?:Client|Server) Error"
        r"|HTTP (?:status )?(?:code )?(\d{3})",
        text,
    )
    if status:
        code = next(g for g in status.groups() if g)
        if code == "404":
            return "the tracking server answered HTTP 404: the store does not hold it"
        return f"the tracking server answered HTTP {code}; its log (or its gateway's) has the cause"
    cause = re.search(r"\(Caused by (\w+)\((.*?)\)\)", text)
    if cause:  # urllib3's retry gave up on something other than a status (the server dropped the upload)
        return f"the tracking server failed the request ({cause[1]}: {cause[2][:120]})"
    return error_line(exc)


def _version_artifact_location(client: Any, name: str, version: str) -> str:
    """Where a version's model files live (a logged model's ``models:/m-…`` source is resolved)."""
    root = str(client.get_model_version_download_uri(name, version)).rstrip("/")
    if root.startswith("models:/"):
        model_id, _, rest = root.removeprefix("models:/").partition("/")
        location = str(client.get_logged_model(model_id).artifact_location).rstrip("/")
        root = f"{location}/{rest}" if rest else location
    return root


def _experiment_artifact_location(client: Any, run_id: str) -> str | None:
    """The artifact location of the run's experiment (where its logged models go), or None."""
    try:
        return str(client.get_experiment(client.get_run(run_id).info.experiment_id).artifact_location)
    except Exception:  # only names the store in an error message; the caller falls back to the server
        return None


def _fail_logged_model(client: Any, model_id: str) -> None:
    """Mark a logged model whose files did not reach the store FAILED (best effort: the caller reports the
    store's error; the model is not registered either way)."""
    import contextlib

    with contextlib.suppress(Exception):
        client.finalize_logged_model(model_id, "FAILED")


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _roll_back(client: Any, name: str, version: str, alias: str, previous: str | None) -> None:
    """Delete a version this registration created and put ``alias`` back where it was."""
    import contextlib

    # Best effort: the original error is what the caller reports, and the reconcile of the next
    # registration deletes a version this could not (it stays pending).
    with contextlib.suppress(Exception):
        client.delete_model_version(name, version)
    if previous is not None:
        with contextlib.suppress(Exception):
            client.set_registered_model_alias(name, alias, previous)


def _pending_versions_of(client: Any, name: str, owner: str) -> list[str]:
    return [
        str(v.version)
        for v in model_versions(client, name)
        if v.tags.get(STATE_TAG) == PENDING and v.tags.get(OWNER_TAG) == owner
    ]


def _owner() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str, created_ms: int | None) -> bool:
    """Whether the process that is registering a pending version may still be at work."""
    import os
    import socket
    import time

    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            return False  # this process is here to register; a version of its own left pending is stale
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    age_s = time.time() - (created_ms or 0) / 1000
    return age_s < STALE_PENDING_S


def model_versions(client: Any, name: str) -> list[Any]:
    """Every version of ``name`` (none when the model does not exist), oldest first."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    return sorted(found, key=lambda v: int(v.version))


def versions_with_bundle(client: Any, name: str, bundle_version: str) -> list[str]:
    """Registered (not pending) versions of ``name`` holding the bundle ``bundle_version``, oldest first."""
    return [
        str(v.version)
        for v in model_versions(client, name)
        if v.tags.get(BUNDLE_TAG) == bundle_version and v.tags.get(STATE_TAG, REGISTERED) != PENDING
    ]


def _aliases(client: Any, name: str, version: Any) -> list[str]:
    aliases = list(getattr(version, "aliases", None) or [])
    if aliases:
        return aliases
    from mlflow.exceptions import MlflowException

    try:
        return list(client.get_model_version(name, str(version.version)).aliases or [])
    except MlflowException:
        return []


def reconcile_versions(client: Any, name: str) -> list[str]:
    """Finish what a killed registration left: a pending version the alias already points at is completed
    (only its state tag was missing); one without an alias is deleted, unless its process may still be
    registering it. Returns one line per action."""
    from mlflow.exceptions import MlflowException

    actions: list[str] = []
    for v in model_versions(client, name):
        if v.tags.get(STATE_TAG) != PENDING:
            continue
        version = str(v.version)
        try:
            if _aliases(client, name, v):
                client.set_model_version_tag(name, version, STATE_TAG, REGISTERED)
                if OWNER_TAG in v.tags:
                    client.delete_model_version_tag(name, version, OWNER_TAG)
                actions.append(f"{name} v{version}: completed (alias set, state tag was pending)")
            elif not _owner_alive(str(v.tags.get(OWNER_TAG, "")), v.creation_timestamp):
                client.delete_model_version(name, version)
                actions.append(f"{name} v{version}: deleted (left pending by an interrupted registration)")
        except MlflowException as exc:
            actions.append(f"{name} v{version}: could not reconcile ({error_line(exc)})")
    return actions


def reconcile_registry(cfg: ClinriskConfig, run_dir: Path | None = None) -> list[str]:
    """:func:`reconcile_versions` for the config's registered model (the store checker calls this)."""
    configure(cfg, run_dir)
    return reconcile_versions(mlflow_client(), cfg.tracking.registered_model_name)


def registry_problems(client: Any, name: str) -> list[str]:
    """Inconsistencies of the registered model ``name``: a version with an alias but without its tags or
    still pending, a pending version nobody is registering, two versions of one bundle."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for v in model_versions(client, name):
        version, tags = str(v.version), v.tags
        aliases = _aliases(client, name, v)
        state = tags.get(STATE_TAG, REGISTERED)
        if aliases:
            missing = [t for t in REQUIRED_VERSION_TAGS if not tags.get(t)]
            if missing:
                problems.append(f"{name} v{version} (@{', @'.join(aliases)}): missing tag(s) {missing}")
            if state == PENDING:
                problems.append(f"{name} v{version} (@{', @'.join(aliases)}): still marked pending")
        elif state == PENDING and not _owner_alive(str(tags.get(OWNER_TAG, "")), v.creation_timestamp):
            problems.append(f"{name} v{version}: left pending by an interrupted registration")
        h = tags.get(BUNDLE_TAG)
        if h and state != PENDING:
            if h in seen:
                problems.append(f"{name} v{version}: same bundle {h} as v{seen[h]} (should have been reused)")
            else:
                seen[h] = version
    return problems
