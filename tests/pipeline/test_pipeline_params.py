"""The Kubeflow UI's pipeline parameters (use case, config by name, common overrides) → the run's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinrisk.config import load_config
from clinrisk.config.pipeline import STEP_DEFAULTS, cpu_cores, memory_bytes
from clinrisk.errors import ConfigError
from clinrisk.pipeline_params import CONFIGS_ENV, PipelineParams, named_config_file, resolve

REPO = Path(__file__).resolve().parents[2]


def test_named_config_with_common_overrides(tmp_path: Path) -> None:
    cfg = resolve(
        PipelineParams(usecase="clinical", config_name="tiny", n_patients=1234, seed=5, run_name="ui-run"),
        tmp_path,
    )
    ref = load_config(REPO / "configs/clinical/tiny.yaml")
    assert cfg.generate.n_patients == 1234 and cfg.run.seed == 5 and cfg.run.name == "ui-run"
    assert cfg.train.num_boost_round == ref.train.num_boost_round
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_zero_and_minus_one_keep_the_files_values(tmp_path: Path) -> None:
    cfg = resolve(PipelineParams(usecase="leads", config_name="tiny"), tmp_path)
    ref = load_config(REPO / "configs/leads/tiny.yaml")
    assert cfg.to_dict() == ref.to_dict()


def test_dotted_overrides_win_over_the_common_fields(tmp_path: Path) -> None:
    cfg = resolve(
        PipelineParams(config_name="tiny", n_patients=1000, overrides=["generate.n_patients=2000"]), tmp_path
    )
    assert cfg.generate.n_patients == 2000


def test_shared_config_takes_the_forms_use_case(tmp_path: Path) -> None:
    cfg = resolve(PipelineParams(usecase="clinical", config_name="cluster"), tmp_path)
    assert cfg.tracking.tracking_uri == "http://mlflow.mlflow.svc.cluster.local:5000"


def test_pasted_yaml_replaces_the_named_file(tmp_path: Path) -> None:
    text = (REPO / "configs/clinical/tiny.yaml").read_text()
    cfg = resolve(PipelineParams(config_name="does-not-matter", config_yaml=text, seed=9), tmp_path)
    assert cfg.run.name == "tiny" and cfg.run.seed == 9


@pytest.mark.parametrize(
    "params,message",
    [
        (PipelineParams(config_name="nope"), "no config 'nope' for use case 'clinical'.*known: .*tiny"),
        (PipelineParams(config_name="../etc/passwd"), "config_name: '../etc/passwd' is not a name"),
        (PipelineParams(usecase="Clinical"), "usecase: 'Clinical' is not a name"),
        (PipelineParams(usecase="leads", config_name="clinical/tiny"), "is not a name"),
        (PipelineParams(n_patients=-5), "n_patients: -5"),
        (PipelineParams(seed=-2), "seed: -2"),
        (PipelineParams(config_yaml="a: [1"), "config_yaml: not valid YAML"),
        (PipelineParams(config_yaml="- 1\n- 2"), "config_yaml: top level must be a mapping"),
        (PipelineParams(overrides=["generate.n_patients=-1"]), "generate.n_patients"),
    ],
)
def test_bad_parameters_name_the_field(params: PipelineParams, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(params, tmp_path)


def test_usecase_mismatch_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "configs" / "leads"
    d.mkdir(parents=True)
    (d / "odd.yaml").write_text("run:\n  usecase: clinical\n")
    monkeypatch.setenv(CONFIGS_ENV, str(tmp_path / "configs"))
    assert named_config_file("leads", "odd") == d / "odd.yaml"
    with pytest.raises(ConfigError, match="configures use case 'clinical', not 'leads'"):
        resolve(PipelineParams(usecase="leads", config_name="odd"), tmp_path)


def test_configs_are_found_outside_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A task's working directory is not the repository (a pod's is /tmp): the package's own copy is used.
    monkeypatch.chdir(tmp_path)
    assert (
        named_config_file("clinical", "tiny").read_text() == (REPO / "configs/clinical/tiny.yaml").read_text()
    )


def test_resource_quantities_are_validated() -> None:
    assert cpu_cores("500m") == 0.5 and cpu_cores("2") == 2.0
    assert memory_bytes("512Mi") == 512 * 2**20 and memory_bytes("2G") == 2 * 10**9
    cfg = load_config(None, ["pipeline.resources.train.memory=8Gi"])
    assert cfg.pipeline.resources["train"].memory == "8Gi"
    assert cfg.pipeline.resources["train"].cpu == STEP_DEFAULTS["train"]["cpu"]  # per-step default kept
    assert cfg.pipeline.resources["evaluate"].memory == STEP_DEFAULTS["evaluate"]["memory"]
    for bad, message in [
        ("pipeline.resources.train.cpu=lots", "not a CPU quantity"),
        ("pipeline.resources.train.memory=8GB", "not a memory quantity"),
        ("pipeline.resources.train.memory=0", "must be more than 0"),
        ("pipeline.resources.train.memory_limit=1Gi", "below the request"),
        ("pipeline.resources.trian.cpu=1", "unknown step"),
        ("pipeline.resources.train.gpu=1", "unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [bad])
