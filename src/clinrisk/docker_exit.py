"""A Docker task's exit code, read for certain (a workaround for kfp.local 2.17's ``run_docker_container``).

kfp.local starts each task container with ``auto_remove=True`` and reads its exit code with
``container.wait()`` after streaming its logs. A step that fails fast (a gate that raises within a second)
can be gone before ``wait()`` is called; kfp then catches ``NotFound`` and returns 0, so the failed step is
recorded as a success, publishes no outputs, and the run fails later on an unrelated "task not found"
(seen in CI: merge-data's quarantine gate, 0.9 s). :func:`run_task_container` runs the container without
``auto_remove``, waits for its exit code, and then removes it itself (also when log streaming is
interrupted), so the code is always the container's own. :func:`install` points kfp's Docker task
handler at it. Upstream: kubeflow/pipelines#13332 (open fixes #13402, #13907 do the same); drop this
module once the locked kfp has the fix.
"""

from __future__ import annotations

import contextlib
from typing import Any


def run_task_container(
    client: Any, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any
) -> int:
    """Run one task container to its end and return its exit code (same arguments as kfp's
    ``run_docker_container``; the image is present: :func:`clinrisk.pipeline_runner.ensure_docker_image`)."""
    import docker
    from kfp.local.docker_task_handler import add_latest_tag_if_not_present

    run_args.pop("auto_remove", None)  # removed below, once its exit code has been read
    container = client.containers.run(
        image=add_latest_tag_if_not_present(image=image),
        command=command,
        detach=True,
        stdout=True,
        stderr=True,
        volumes=volumes,
        **run_args,
    )
    try:
        for line in container.logs(stream=True):
            print(line.decode(), end="")
        return int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(docker.errors.APIError):  # NotFound included: already gone
            container.remove(force=True)


def install() -> None:
    """Make kfp.local's Docker task handler run its containers with :func:`run_task_container`."""
    from kfp.local import docker_task_handler

    docker_task_handler.run_docker_container = run_task_container
