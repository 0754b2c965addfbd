"""Config loading: defaults, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinrisk.config import config_hash, flatten_config, load_config, save_config
from clinrisk.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["default.yaml", "tiny.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert cfg.labels.horizon_years >= 1


def test_override_applies_and_is_typed() -> None:
    cfg = load_config(None, ["generate.n_patients=1234", "labels.strategy=E2"])
    assert cfg.generate.n_patients == 1234
    assert cfg.labels.strategy == "E2"


def test_an_iso_date_is_a_name_not_a_date(tmp_path: Path) -> None:
    assert load_config(None, ["run.name=2026-12-03"]).run.name == "2026-12-03"
    cfg_file = tmp_path / "dated.yaml"
    cfg_file.write_text("run:\n  name: 2026-12-03\n")
    assert load_config(cfg_file).run.name == "2026-12-03"
    # A use case's date-typed params still get their dates (pydantic parses the string).
    leads = load_config(
        REPO / "configs" / "leads" / "tiny.yaml", ["params.features.first_snapshot=2024-03-04"]
    )
    assert str(leads.params["features"]["first_snapshot"]) == "2024-03-04"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("generate.n_patiens=5", "generate.n_patiens: unknown key"),
        ("generate.n_patients=abc", "generate.n_patients"),
        ("labels.strategy=E9", "labels.strategy"),
        ("nosuch.key=1", "unknown section 'nosuch'"),
        ("novalue", "expected KEY=VALUE"),
        ("split.train_buckets=[70,10]", "split.train_buckets"),
        ("train.max_rows=10", "train.max_rows"),
        ("train.max_rows=many", "train.max_rows"),
    ],
)
def test_bad_override_names_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert needle in str(exc.value)


def test_several_bad_values_are_one_line_naming_each_key() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.calibration=platt", "train.nope=1"])
    message = str(exc.value)
    assert "\n" not in message
    assert "train.calibration: " in message and "platt" in message and "train.nope: unknown key" in message


def test_bad_use_case_params_are_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["run.usecase=leads", "params.nope=1"])
    assert "\n" not in str(exc.value) and "params.nope: unknown key" in str(exc.value)


def test_bad_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rat: unknown key"):
        load_config(unknown)


def test_save_roundtrip_and_hash(tmp_path: Path) -> None:
    cfg = load_config(None, ["run.seed=5"])
    path = save_config(cfg, tmp_path / "c.yaml")
    again = load_config(path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(None, ["run.seed=6"])) != config_hash(cfg)
    flat = flatten_config(cfg)
    assert flat["run.seed"] == "5"
    assert "validate.max_quarantine_fraction" in flat
