"""Registration through a tracking server whose artifact store is broken registers nothing (issue 14).

The tier-1 twin of tests/platform's wrong-credentials and missing-bucket cases. Two real ``mlflow server``
processes share one backend store (as a re-pointed or second replica shares Postgres on the cluster), both
proxying artifacts (``--serve-artifacts``, the chart's mode):

- ``good`` writes to a folder;
- ``broken`` points ``--artifacts-destination`` under a regular file, so every read and write of its store
  fails on the server (NotADirectoryError, which root cannot bypass the way it bypasses file modes), and the
  client sees only HTTP 500s, as with an object store that refuses the server's credentials.

The case that regressed: the bundle is already registered (through ``good``), so registration reuses its
version and uploads nothing; nothing else then noticed that the store behind ``broken`` is unusable, and
``register`` exited 0. Each case must end with one ``error:`` line naming the artifact store, exit 2, the
version count and the alias unchanged, and the run FAILED (not left RUNNING).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.model.conftest import small_config

MODEL = "clinrisk"
# The MLflow client retries a 500 seven times with backoff by default: minutes per failure. The budget only
# changes how long the failure takes to surface, not whether it does.
FAST_FAIL = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: uvicorn and its workers
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _launch_server(backend: str, destination: str, log: Path) -> Server:
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    argv = [str(mlflow), "server", "--backend-store-uri", backend, "--serve-artifacts",
            "--artifacts-destination", destination, "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(f"http://127.0.0.1:{port}", proc, log)


def _wait_ready(server: Server, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # An API call, not /health: the first one is what is slow on a loaded machine.
            url = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
            urllib.request.urlopen(url, timeout=10).read()
            return
        except OSError:
            if server.proc.poll() is not None or time.monotonic() > deadline:
                text = server.log.read_text()[-2000:]
                raise RuntimeError(f"mlflow server did not come up; log {server.log}:\n{text}") from None
            time.sleep(0.5)


@dataclass
class Stores:
    work: Path
    good: Server
    broken: Server
    good_root: Path

    def wait_ready(self) -> None:
        _wait_ready(self.good)
        _wait_ready(self.broken)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    """Both servers, launched (not yet ready: they boot while the bundles train; call ``wait_ready``)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    work = tmp_path_factory.mktemp("broken-store")
    backend = f"sqlite:///{work / 'mlflow.db'}"
    good_root = work / "objects"
    good_root.mkdir()
    (work / "not-a-folder").write_text("a regular file: nothing can be stored below it\n")
    # The schema first, so the two servers do not both migrate an empty database at once.
    SqlAlchemyStore(backend, good_root.as_uri()).engine.dispose()
    good = _launch_server(backend, good_root.as_uri(), work / "good.log")
    broken = _launch_server(backend, (work / "not-a-folder" / "objects").as_uri(), work / "broken.log")
    try:
        yield Stores(work, good, broken, good_root)
    finally:
        broken.stop()
        good.stop()


@pytest.fixture(scope="module")
def other_bundle_dir(synthetic_features_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle that differs from ``trained_bundle_dir`` (fewer features), so registering it logs anew."""
    from clinrisk.train import train_model

    out = tmp_path_factory.mktemp("other-bundle") / "bundle"
    keep = ["age", "sex", "insurance", "bmi", "visits", "ldl_mean_3y"]
    train_model(small_config(), synthetic_features_dir, out, selected_features=keep)
    return out


def _register(stores: Stores, server: Server, bundle: Path) -> subprocess.CompletedProcess[str]:
    sets = {"tracking.tracking_uri": server.url, "run.output_dir": str(stores.work / "outputs")}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    return subprocess.run(
        [sys.executable, "-m", "clinrisk", "register", *args, "--bundle", str(bundle)],
        capture_output=True, text=True, timeout=600, cwd=stores.work, env={**os.environ, **FAST_FAIL},
    )  # fmt: skip


# The registry core alone, as the register stage calls it once the run's config and reports are uploaded:
# through a store that refuses every upload the stage stops at those uploads (see the test), so the core's
# own checks (the reused version's files, the model upload) are driven here directly.
_REGISTER_CORE = """
import sys
from pathlib import Path
from clinrisk.config import load_config
from clinrisk.errors import DataError
from clinrisk.registry import register_bundle
from clinrisk.tracking import configure, end_run, start_run
cfg = load_config(None, ["tracking.tracking_uri=" + sys.argv[1]])
configure(cfg)
run_id = start_run(cfg)
try:
    register_bundle(cfg, Path(sys.argv[2]), run_id)
except DataError as exc:
    end_run(run_id, "FAILED")
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2)
end_run(run_id)
"""


def _register_core(stores: Stores, server: Server, bundle: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _REGISTER_CORE, server.url, str(bundle)],
        capture_output=True, text=True, timeout=600, cwd=stores.work, env={**os.environ, **FAST_FAIL},
    )  # fmt: skip


def _registry(stores: Stores) -> tuple[list[str], str | None]:
    """(every version of the model, the version @challenger points at)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stores.good.url, registry_uri=stores.good.url)
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    try:
        alias: str | None = str(client.get_model_version_by_alias(MODEL, "challenger").version)
    except MlflowException:
        alias = None
    return versions, alias


def _run_states(stores: Stores) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stores.good.url)
    exps = [e.experiment_id for e in client.search_experiments()]
    return [r.info.status for r in client.search_runs(exps, order_by=["attributes.start_time ASC"])]


def _one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, f"exit {out.returncode}:\n{out.stdout[-1500:]}\n{out.stderr[-3000:]}"
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and out.stderr.rstrip().endswith(errors[0]), out.stderr
    assert "Traceback" not in out.stderr
    return errors[0]


def _assert_refused(
    stores: Stores,
    server: Server,
    bundle: Path,
    before: tuple[list[str], str | None],
    register: Callable[[Stores, Server, Path], subprocess.CompletedProcess[str]] = _register,
) -> str:
    runs_before = len(_run_states(stores))
    t0 = time.monotonic()
    line = _one_error_line(register(stores, server, bundle))
    print(f"\nREFUSED in {time.monotonic() - t0:.0f}s: {line}")
    assert f"{server.url}: cannot register {MODEL}" in line, line
    assert "artifact store " in line, line  # names the store, not just the server
    assert _registry(stores) == before, "the registry changed"
    states = _run_states(stores)
    assert len(states) == runs_before + 1 and states[-1] == "FAILED", states
    return line


@pytest.mark.slow
def test_a_broken_store_registers_nothing(
    stores: Stores, trained_bundle_dir: Path, other_bundle_dir: Path
) -> None:
    stores.wait_ready()
    first = _register(stores, stores.good, trained_bundle_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _registry(stores)
    assert before == (["1"], "1")

    # `clinrisk register` through that server: the run's config and reports are refused first (the same
    # store), so nothing reaches the registry, for a registered bundle and a new one alike.
    for bundle in (trained_bundle_dir, other_bundle_dir):
        line = _assert_refused(stores, stores.broken, bundle, before)
        assert "artifact store mlflow-artifacts:/1: cannot log the run's config and reports (" in line, line

    # Reuse (the regression): the bundle is registered as v1, whose files this server cannot read.
    line = _assert_refused(stores, stores.broken, trained_bundle_dir, before, _register_core)
    assert "mlflow-artifacts:/1/models/m-" in line and "v1 holds this bundle" in line, line
    assert re.search(r"HTTP [45]\d\d", line), line

    # A new bundle: its upload fails on the server; no version, and MLflow marks the logged model FAILED.
    line = _assert_refused(stores, stores.broken, other_bundle_dir, before, _register_core)
    assert "artifact store mlflow-artifacts:/1: cannot log the model (the tracking server " in line, line
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stores.good.url)
    exps = [e.experiment_id for e in client.search_experiments()]
    statuses = sorted(str(m.status) for m in client.search_logged_models(exps))
    assert statuses == ["FAILED", "READY"], statuses

    # The store answers but no longer holds v1's files (MinIO on a fresh volume, a bucket emptied): moving
    # the alias to v1 would point serving at nothing.
    moved = stores.good_root.with_name("objects.moved")
    stores.good_root.rename(moved)
    stores.good_root.mkdir()
    try:
        line = _assert_refused(stores, stores.good, trained_bundle_dir, before)
        assert "v1 holds this bundle" in line, line
    finally:
        shutil.rmtree(stores.good_root)
        moved.rename(stores.good_root)
