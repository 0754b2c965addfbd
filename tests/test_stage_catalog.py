"""The stage catalog: one layout by logical name, its KFP binding checked against the compiled DAG, and the
CLI and the KFP step of a stage calling the same ``run`` with the same result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from clinrisk.errors import ConfigError
from clinrisk.stages.catalog import KFP_OUTPUTS, RUN_LAYOUT, Catalog, flat_numeric


def test_run_layout_and_overrides(tmp_path: Path) -> None:
    io = Catalog.for_run(tmp_path, features=tmp_path / "elsewhere", selection=None)
    assert io.path("features") == tmp_path / "elsewhere"
    assert io.path("selection") == tmp_path / "selection"  # None keeps the layout's entry
    assert io.path("model_bundle") == tmp_path / "bundle"
    assert set(RUN_LAYOUT) <= set(io.paths)
    assert io.existing("evaluation") is None
    (tmp_path / "evaluation").mkdir()
    assert io.existing("evaluation") == tmp_path / "evaluation"


def test_unknown_artefact_is_a_config_error_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"catalog: no artefact 'modle_bundle' \(known: .*model_bundle"):
        Catalog.for_run(tmp_path).path("modle_bundle")
    assert Catalog({}).get("features") is None


def test_numeric_sinks_skip_bools_and_nan() -> None:
    logged: dict[str, float] = {}
    io = Catalog({}, log_metric=logged.__setitem__)
    io.log_numeric({"a": 1, "b": {"c": 2.5, "ok": True, "nan": float("nan")}, "s": "x"})
    assert logged == {"a": 1.0, "b.c": 2.5}
    assert flat_numeric({"v": {"auc": 0.7}}) == {"v.auc": 0.7}


def _dag_outputs(ir: dict[str, Any]) -> dict[str, set[str]]:
    """Task name -> its output artefact names, over the root DAG and every sub-DAG."""
    comps = ir["components"]
    out: dict[str, set[str]] = {}
    for comp in [ir["root"], *comps.values()]:
        for name, task in ((comp.get("dag") or {}).get("tasks") or {}).items():
            ref = task["componentRef"]["name"]
            arts = (comps[ref].get("outputDefinitions") or {}).get("artifacts") or {}
            out[name] = set(arts)
    return out


def test_kfp_binding_matches_the_compiled_dag(tmp_path: Path) -> None:
    """Every (task, output) the catalog reads a finished run back from is a task and output of the DAG."""
    from clinrisk.pipeline_runner import compile_pipeline

    ir = yaml.safe_load(compile_pipeline(tmp_path / "p.yaml").read_text())
    outputs = _dag_outputs(ir)
    for name, (task, output, *_) in KFP_OUTPUTS.items():
        assert task in outputs, f"{name}: no task {task!r} in the DAG"
        assert output in outputs[task], f"{name}: task {task!r} has no output {output!r}"


def test_locate_outputs_reads_the_binding(tmp_path: Path) -> None:
    from clinrisk.experiments import locate_outputs

    io = Catalog.for_kfp_run(tmp_path)
    assert locate_outputs(tmp_path) == dict.fromkeys(
        ("evaluation_dir", "predictions", "bundle_dir", "features_dir", "selection_file")
    )
    io.path("model_bundle").mkdir(parents=True)
    assert locate_outputs(tmp_path)["bundle_dir"] == str(tmp_path / "train" / "bundle")
