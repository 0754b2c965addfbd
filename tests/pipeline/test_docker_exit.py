"""A Docker task's exit code is always the container's own (kfp.local 2.17 read a fast-failing task whose
container was already auto-removed as exit code 0, so a failed gate counted as a success)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import pytest
from kfp.local import docker_task_handler

from clinrisk import docker_exit


class FakeContainer:
    """A container that has exited with ``code``; with ``auto_remove`` the engine removed it at once."""

    def __init__(self, code: int, auto_remove: bool, log_error: Exception | None = None) -> None:
        self.code, self.gone, self.removed, self.log_error = code, auto_remove, False, log_error

    def logs(self, stream: bool) -> Iterator[bytes]:
        yield b"error: the step failed\n"
        if self.log_error is not None:
            raise self.log_error

    def wait(self) -> dict[str, int]:
        if self.gone:
            raise docker.errors.NotFound("No such container")
        return {"StatusCode": self.code}

    def remove(self, force: bool = False) -> None:
        if self.gone:
            raise docker.errors.NotFound("No such container")
        self.gone = self.removed = True


class FakeImage:
    def __init__(self) -> None:
        self.tags = ["clinrisk/pipeline:0.1.0"]
        self.attrs: dict[str, list[str]] = {"RepoDigests": []}


class FakeClient:
    def __init__(self, code: int, log_error: Exception | None = None) -> None:
        self.code, self.log_error = code, log_error
        self.run_args: dict[str, Any] = {}
        self.container: FakeContainer | None = None
        self.containers = self
        self.images = self

    def list(self) -> list[FakeImage]:  # client.images.list(): the image is present
        return [FakeImage()]

    def run(self, **kwargs: Any) -> FakeContainer:
        self.run_args = kwargs
        self.container = FakeContainer(self.code, bool(kwargs.get("auto_remove")), self.log_error)
        return self.container


ARGS = {"image": "clinrisk/pipeline:0.1.0", "command": ["python", "-c", "raise SystemExit(3)"], "volumes": {}}


def test_kfp_reads_a_container_removed_before_wait_as_success() -> None:
    """The upstream behaviour this module works around: it is why the docker tier once saw a failed
    merge-data continue. When a kfp upgrade fixes it (kubeflow/pipelines#13332), this test fails: then
    drop ``clinrisk.docker_exit``."""
    client = FakeClient(code=3)
    assert docker_task_handler.run_docker_container(client, **ARGS) == 0  # type: ignore[arg-type]


def test_the_exit_code_is_the_containers_and_the_container_is_removed_after(capsys) -> None:
    client = FakeClient(code=3)
    assert docker_exit.run_task_container(client, **ARGS, labels={"io.clinrisk.run-id": "r"}) == 3
    assert "auto_remove" not in client.run_args and client.run_args["labels"] == {"io.clinrisk.run-id": "r"}
    assert client.container is not None and client.container.removed
    assert "error: the step failed" in capsys.readouterr().out
    ok = FakeClient(code=0)
    assert (
        docker_exit.run_task_container(ok, **ARGS, auto_remove=True) == 0
    )  # a caller's auto_remove is dropped
    assert "auto_remove" not in ok.run_args and ok.container is not None and ok.container.removed


def test_a_container_is_removed_when_its_logs_break_off() -> None:
    client = FakeClient(code=0, log_error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        docker_exit.run_task_container(client, **ARGS)
    assert client.container is not None and client.container.removed


def test_install_points_kfps_docker_handler_at_it(monkeypatch) -> None:
    monkeypatch.setattr(docker_task_handler, "run_docker_container", docker_task_handler.run_docker_container)
    docker_exit.install()
    assert docker_task_handler.run_docker_container is docker_exit.run_task_container
