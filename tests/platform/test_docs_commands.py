"""The `kfp run create` commands in README.md and docs/kubernetes.md, run through kfp's real CLI.

Each command found in a code block or code span is executed by `kfp.cli.cli.cli` (the `kfp` entry point)
with the KFP API client replaced by a recorder at the network boundary, against the pipeline package that
`clinrisk pipeline compile` writes. The recorded parameters must be the compiled pipeline's inputs, every
required one present, and the config they name (`usecase` + `config_name`, or the pasted `config_yaml`) one
that validates — the cluster ones pointing at the cluster's MLflow server.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/kubernetes.md")
CLUSTER_TRACKING = "http://mlflow.mlflow.svc.cluster.local:5000"


def _code_texts(markdown: str) -> list[str]:
    """Fenced blocks, indented blocks (≥ 4 spaces, list items included) and inline code spans."""
    texts: list[str] = []
    fenced = re.compile(r"^\s*```[^\n]*\n(.*?)^\s*```", re.M | re.S)
    for m in fenced.finditer(markdown):
        texts.append(m.group(1))
    rest = fenced.sub("", markdown)
    block: list[str] = []
    for line in [*rest.splitlines(), ""]:
        if line.startswith("    ") and line.strip():
            block.append(line.strip())
        elif block:
            texts.append("\n".join(block))
            block = []
    # Inline spans may wrap across lines in a paragraph.
    texts.extend(m.group(1) for m in re.finditer(r"`([^`]+)`", rest.replace("\n", " ")))
    return texts


def kfp_run_create_commands(markdown: str) -> list[str]:
    found = []
    for text in _code_texts(markdown):
        joined = re.sub(r"\s*\\\n\s*", " ", text)
        for line in joined.splitlines():
            m = re.search(r"(?:^|\s)(kfp\s.*\brun\s+create\b.*)$", line)
            if m:
                found.append(" ".join(m.group(1).split()))
    return found


class _Submitted(Exception):
    pass


class _RecordingClient:
    """Stands in for kfp.client.Client at the network boundary: records what the CLI would submit."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, host: str | None = None, *args: Any, **kwargs: Any) -> None:
        self.host = host

    def create_experiment(self, name: str, *args: Any, **kwargs: Any) -> SimpleNamespace:
        return SimpleNamespace(experiment_id=f"exp-{name}")

    def run_pipeline(self, **kwargs: Any) -> None:
        _RecordingClient.calls.append({"host": self.host, **kwargs})
        raise _Submitted


def _expand(value: Any) -> Any:
    """What the shell would substitute for `$(cat FILE)` (the only substitution the docs use)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\$\(cat ([\w./-]+)\)", value)
        if m:
            return (REPO / m.group(1)).read_text()
    return value


def _pipeline_inputs(package: Path) -> dict[str, dict[str, Any]]:
    spec = next(yaml.safe_load_all(package.read_text()))  # the second document: the platform spec
    return dict(spec["root"]["inputDefinitions"]["parameters"])


@pytest.fixture(scope="module")
def compiled_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clinrisk.pipeline_runner import compile_pipeline

    root = tmp_path_factory.mktemp("kfp-docs")
    compile_pipeline(root / "outputs/kfp/clinrisk-training.yaml")
    return root


def test_the_docs_have_kfp_commands() -> None:
    for doc in DOCS:
        assert kfp_run_create_commands((REPO / doc).read_text()), f"{doc}: no `kfp run create` command found"


def test_extraction_sees_wrapped_and_inline_commands() -> None:
    md = (
        "text `kfp --endpoint http://h run create --experiment-name e\nconfig_yaml=x` more\n\n"
        "       kfp --endpoint http://h run create \\\n           --package-file p.yaml a=1\n"
    )
    assert kfp_run_create_commands(md) == [
        "kfp --endpoint http://h run create --package-file p.yaml a=1",
        "kfp --endpoint http://h run create --experiment-name e config_yaml=x",
    ]


@pytest.mark.parametrize(
    "doc,command",
    [(doc, cmd) for doc in DOCS for cmd in kfp_run_create_commands((REPO / doc).read_text())],
)
def test_kfp_command_submits_a_valid_run(
    doc: str, command: str, compiled_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kfp.client
    from kfp.cli.cli import cli

    from clinrisk.pipeline_params import PipelineParams, resolve

    monkeypatch.chdir(compiled_root)
    monkeypatch.setattr(kfp.client, "Client", _RecordingClient)
    _RecordingClient.calls = []
    argv = shlex.split(command, comments=True)
    assert argv[0] == "kfp"
    with pytest.raises(_Submitted):
        cli.main(argv[1:], prog_name="kfp", obj={}, standalone_mode=False)
    (call,) = _RecordingClient.calls
    assert call["host"], f"{doc}: {command}: no --endpoint"
    package = Path(call["pipeline_package_path"])
    assert package.is_file(), (
        f"{doc}: {command}: package {package} is not what `clinrisk pipeline compile` writes"
    )
    inputs = _pipeline_inputs(package)
    params = {k: _expand(v) for k, v in call["params"].items()}
    assert set(params) <= set(inputs), f"{doc}: unknown pipeline parameters {set(params) - set(inputs)}"
    required = {n for n, d in inputs.items() if not d.get("isOptional")}
    assert required <= set(params), f"{doc}: {command}: missing required {sorted(required - set(params))}"
    # The run's config as the resolve-config task makes it: the named file or the pasted YAML, + overrides.
    form = {k: v for k, v in params.items() if k in PipelineParams.__dataclass_fields__}
    cfg = resolve(PipelineParams(**form), compiled_root / "scratch")
    assert cfg.tracking.tracking_uri == CLUSTER_TRACKING, (
        f"{doc}: the cluster run must log to the MLflow server"
    )
    assert cfg.tracking.artifacts_destination == "s3://mlflow"
    for key, value in params.items():
        kind = inputs[key]["parameterType"]
        expected = {"STRING": str, "BOOLEAN": bool, "NUMBER_INTEGER": int, "LIST": list}[kind]
        assert isinstance(value, expected), f"{doc}: {key}={value!r} is not {kind}"


def test_cluster_config_is_the_default_plus_the_cluster_tracking_server() -> None:
    from clinrisk.config import load_config

    default = load_config(REPO / "configs/default.yaml").to_dict()
    cluster = load_config(REPO / "configs/cluster.yaml").to_dict()
    assert cluster["tracking"]["tracking_uri"] == CLUSTER_TRACKING
    default.pop("tracking"), cluster.pop("tracking")
    assert cluster == default
