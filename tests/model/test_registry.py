"""Registration is atomic and idempotent (issue 18).

- An identical bundle (same content hash) reuses its version; the alias moves to it; nothing new is logged.
- A version appears with its tags and alias together, or not at all: a failure at any point inside
  ``register_bundle`` deletes what it created and puts the alias back.
- A process SIGKILLed inside registration leaves a version marked pending; the reconcile at the start of the
  next registration (and in the store checker) deletes it, or completes it when the alias already moved.

After each scenario the registry invariants hold: every aliased version has its tags and is not pending, no
pending version is left without a live owner, no two versions hold one bundle.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from clinrisk import registry, tracking
from clinrisk.errors import DataError
from tests.model.conftest import small_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def second_bundle_dir(synthetic_features_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A different bundle (fewer features) than ``trained_bundle_dir``: a different content hash."""
    from clinrisk.train import train_model

    out = tmp_path_factory.mktemp("bundle2") / "bundle"
    keep = ["age", "sex", "insurance", "bmi", "visits", "ldl_mean_3y"]
    train_model(small_config(), synthetic_features_dir, out, selected_features=keep)
    return out


def _store(tmp_path: Path) -> tuple[Any, Any, str]:
    cfg = small_config(tmp_path)
    tracking.configure(cfg)
    return cfg, tracking.mlflow_client(), cfg.tracking.registered_model_name


def assert_consistent(client: Any, cfg: Any) -> None:
    """The store checker's registry invariants (plus: no run of this experiment left RUNNING)."""
    name = cfg.tracking.registered_model_name
    assert registry.registry_problems(client, name) == []
    for v in registry.model_versions(client, name):
        assert v.tags.get(registry.STATE_TAG) == registry.REGISTERED, v.version
        for tag in registry.REQUIRED_VERSION_TAGS:
            assert v.tags.get(tag), (v.version, tag)
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    running = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    assert not running, [r.info.run_id for r in running]


def _register(cfg: Any, bundle: Path) -> tuple[str, str]:
    """What `clinrisk register` does: one run, FAILED on error, FINISHED after registration."""
    run_id = tracking.start_run(cfg)
    try:
        version = registry.register_bundle(cfg, bundle, run_id)
    except BaseException:
        tracking.end_run(run_id, "FAILED")
        raise
    tracking.end_run(run_id)
    return run_id, version


def _alias(client: Any, name: str, alias: str = tracking.CHALLENGER) -> str:
    return str(client.get_model_version_by_alias(name, alias).version)


def test_identical_bundle_reuses_its_version(
    trained_bundle_dir: Path, second_bundle_dir: Path, tmp_path: Path
) -> None:
    from clinrisk.bundle import load_bundle

    cfg, client, name = _store(tmp_path)
    _, v1 = _register(cfg, trained_bundle_dir)
    run2, again = _register(cfg, trained_bundle_dir)
    assert v1 == again == "1"
    assert [str(v.version) for v in registry.model_versions(client, name)] == ["1"]
    tags = client.get_run(run2).data.tags
    assert tags["clinrisk.registered_version"] == "1" and tags["clinrisk.registration"].startswith("reused")
    assert not client.list_artifacts(run2), "a reused version logs no second model"
    # A different bundle gets a new version; re-registering the first moves the alias back to v1.
    _, v2 = _register(cfg, second_bundle_dir)
    assert v2 == "2" and _alias(client, name) == "2"
    _, back = _register(cfg, trained_bundle_dir)
    assert back == "1" and _alias(client, name) == "1"
    mv = client.get_model_version(name, "1")
    assert mv.tags[registry.BUNDLE_TAG] == load_bundle(trained_bundle_dir).version
    assert registry.versions_with_bundle(client, name, load_bundle(second_bundle_dir).version) == ["2"]
    assert_consistent(client, cfg)


@pytest.mark.parametrize(
    "method",
    # before the alias moved (the create's response lost), and after it moved
    ["create_model_version", "set_model_version_tag"],
)
def test_crash_inside_register_leaves_nothing_half_done(
    method: str,
    trained_bundle_dir: Path,
    second_bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client call ``method`` does its work and then raises (the worst moment): the new version is
    deleted and ``challenger`` stays on (or returns to) the previous version."""
    from mlflow.tracking import MlflowClient

    cfg, client, name = _store(tmp_path)
    _register(cfg, trained_bundle_dir)
    original = getattr(MlflowClient, method)

    def crash_after(self: Any, *args: Any, **kwargs: Any) -> Any:
        original(self, *args, **kwargs)
        raise RuntimeError(f"injected failure after {method}")

    monkeypatch.setattr(MlflowClient, method, crash_after)
    with pytest.raises(DataError, match=f"cannot register {name} .*injected failure after {method}"):
        _register(cfg, second_bundle_dir)
    monkeypatch.undo()
    assert [str(v.version) for v in registry.model_versions(client, name)] == ["1"]
    assert _alias(client, name) == "1"
    assert_consistent(client, cfg)
    # and the next registration of that bundle works
    _, v = _register(cfg, second_bundle_dir)
    assert _alias(client, name) == v != "1"
    assert_consistent(client, cfg)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from mlflow.tracking import MlflowClient
    from clinrisk import registry, tracking
    from tests.model.conftest import small_config

    tmp, bundle, method = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    original = getattr(MlflowClient, method)

    def then_die(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(MlflowClient, method, then_die)
    cfg = small_config(tmp)
    registry.register_bundle(cfg, bundle, tracking.start_run(cfg))
    """
)


@pytest.mark.parametrize(
    ("method", "outcome"),
    [("create_model_version", "deleted"), ("set_registered_model_alias", "completed")],
)
def test_sigkill_inside_register_is_reconciled(
    method: str, outcome: str, trained_bundle_dir: Path, second_bundle_dir: Path, tmp_path: Path
) -> None:
    cfg, client, name = _store(tmp_path)
    _register(cfg, trained_bundle_dir)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path), str(second_bundle_dir), method],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    (left,) = [v for v in registry.model_versions(client, name) if str(v.version) != "1"]
    assert left.tags[registry.STATE_TAG] == registry.PENDING  # visible only as unfinished
    assert left.tags[registry.BUNDLE_TAG]  # created with its tags in one call
    if outcome == "deleted":
        assert registry.registry_problems(client, name) == [
            f"{name} v{left.version}: left pending by an interrupted registration"
        ]
        assert _alias(client, name) == "1"
    else:
        assert _alias(client, name) == str(left.version)
        assert f"{name} v{left.version} (@challenger): still marked pending" in registry.registry_problems(
            client, name
        )
    (action,) = registry.reconcile_registry(cfg)
    assert action.startswith(f"{name} v{left.version}: {outcome}")
    assert registry.registry_problems(client, name) == []
    # The killed process's run is still RUNNING: closing it is the pipeline exit handler's job
    # (finalize-tracking); here the test closes it like that handler would.
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    for r in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"):
        tracking.end_run(r.info.run_id, "KILLED")
    assert_consistent(client, cfg)
    # Registering the same bundle again: reuses the completed version, or makes a fresh one.
    _, v = _register(cfg, second_bundle_dir)
    assert (v == str(left.version)) == (outcome == "completed")
    assert _alias(client, name) == v
    assert_consistent(client, cfg)


def test_reconcile_spares_a_registration_in_progress(trained_bundle_dir: Path, tmp_path: Path) -> None:
    """A pending version whose owner is alive (this host) or recent (another host) is left alone; one
    whose owner is gone is deleted."""
    import socket

    cfg, client, name = _store(tmp_path)
    run_id, _ = _register(cfg, trained_bundle_dir)
    source = client.get_model_version(name, "1").source
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owners = {
            "alive": f"{socket.gethostname()}:{sleeper.pid}",
            "remote": "another-host:4242",
            "dead": f"{socket.gethostname()}:{_dead_pid()}",
        }
        made = {}
        for what, owner in owners.items():
            tags = {
                registry.STATE_TAG: registry.PENDING,
                registry.OWNER_TAG: owner,
                registry.BUNDLE_TAG: what,
            }
            made[what] = str(client.create_model_version(name, source, run_id, tags=tags).version)
        actions = registry.reconcile_versions(client, name)
        assert actions == [f"{name} v{made['dead']}: deleted (left pending by an interrupted registration)"]
        left = {str(v.version) for v in registry.model_versions(client, name)}
        assert left == {"1", made["alive"], made["remote"]}
        assert registry.registry_problems(client, name) == []  # in progress is not a problem
    finally:
        sleeper.kill()
        sleeper.wait()
    assert registry.reconcile_versions(client, name) == [
        f"{name} v{made['alive']}: deleted (left pending by an interrupted registration)"
    ]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
