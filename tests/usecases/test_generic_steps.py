"""The shared pipeline steps run a use case that is not clinical (the two-table toy of toy.py) end to end:
plan-owned fan-out, generation, validation with quarantine, feature table, selection, training, evaluation,
MLflow registry under the use case's model name, and its V1 contract scored by the trained bundle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from clinrisk import steps
from clinrisk.bundle import load_bundle
from clinrisk.config import load_config
from clinrisk.io import list_shards, read_json
from clinrisk.usecases import get
from tests.usecases.conftest import TOY, toy_registered

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    where = tmp_path_factory.mktemp("toy")
    with toy_registered():
        c = where / "config"
        steps.resolve_config_step(
            (REPO / "tests/usecases/toy.yaml").read_text(), [f"run.output_dir={where}"], c
        )
        run_id = steps.start_tracking_step(c, "kfp-toy")
        shards = steps.plan_generation_step(c, where / "plan")
        gen = [where / f"gen{s}" for s in shards]
        val = [where / f"val{s}" for s in shards]
        for s in shards:
            steps.generate_shard_step(c, where / "plan", s, gen[s])
            steps.validate_shard_step(c, gen[s], s, val[s])
        raw, valid = where / "raw", where / "validated"
        report = steps.merge_data_step(
            c, where / "plan", gen, val, raw, valid, where / "vreport" / "report.md"
        )
        steps.fit_feature_spec_step(c, valid, where / "spec")
        feats = [where / f"feat{s}" for s in shards]
        for s in shards:
            steps.build_features_shard_step(c, where / "spec", valid, raw, s, feats[s])
        summary = steps.merge_features_step(c, where / "spec", feats, where / "features")
        steps.select_features_step(c, where / "features", where / "selection")
        steps.train_step(c, where / "features", where / "selection", run_id, where / "bundle")
        result = steps.evaluate_step(
            c, where / "bundle", where / "features", run_id, where / "evaluation", where / "eval.md"
        )
        uri = steps.register_step(
            c, where / "bundle", where / "evaluation", where / "vreport" / "report.md", run_id
        )
        yield {
            "where": where,
            "shards": shards,
            "report": report,
            "summary": summary,
            "result": result,
            "uri": uri,
        }


def test_fan_out_and_layout_are_the_use_cases(toy_run: dict[str, Any]) -> None:
    where = toy_run["where"]
    assert toy_run["shards"] == [0, 1]
    for table in ("accounts", "usage", "truth"):
        assert len(list_shards(where / "raw" / table)) == 2
    for table in ("accounts", "usage"):  # several tables: one validated directory each
        assert len(list_shards(where / "validated" / table)) == 2
    manifest = read_json(where / "raw" / "manifest.json")
    assert manifest["rows"] == toy_run["report"]["rows_in"] > 0


def test_feature_table_and_model_are_shared(toy_run: dict[str, Any]) -> None:
    where = toy_run["where"]
    assert toy_run["summary"]["usecase"] == TOY
    df = pl.read_parquet(list_shards(where / "features"))
    assert {"patient_id", "year", "split", "actions", "segment", "label", "eval_oracle_risk"} <= set(
        df.columns
    )
    assert not (where / "features" / "feature_schema.json").exists()  # the toy declares no schema document
    bundle = load_bundle(where / "bundle")
    assert bundle.spec["usecase"] == TOY
    assert 0.0 < bundle.threshold < 1.0
    assert toy_run["result"]["headline"]


def test_registry_uses_the_use_cases_model_name(toy_run: dict[str, Any]) -> None:
    assert toy_run["uri"] == "models:/toy/1"


def test_trained_bundle_scores_the_use_cases_v1_instances(toy_run: dict[str, Any]) -> None:
    where = toy_run["where"]
    with toy_registered():
        usecase = get(TOY)
        bundle = load_bundle(where / "bundle")
        spec = usecase.features.fit_spec(None, {})
        cfg = load_config(where / "config" / "config.yaml")  # the run's own effective config
        batch = usecase.serving.parse(
            {"instances": [dict(usecase.serving.example_instance())] * 3}, spec, cfg.serving
        )
        p = bundle.predict_proba(usecase.serving.features(batch, spec))
    assert p.shape == (3,) and float(p.min()) > 0.0 and float(p.max()) < 1.0


def test_the_serving_engine_serves_the_use_cases_bundle(toy_run: dict[str, Any]) -> None:
    """The KServe predictor's engine loads a non-clinical bundle and answers through the use case's contract."""
    from clinrisk.serving.inference import ServingEngine
    from clinrisk.serving.request import InvalidRequest

    where = toy_run["where"]
    with toy_registered():
        cfg = load_config(where / "config" / "config.yaml")
        engine = ServingEngine.from_dir(where / "bundle", cfg.serving)
        check = engine.self_check()
        engine.warm_up()
        inst = dict(get(TOY).serving.example_instance())
        res = engine.score({"instances": [inst, {**inst, "actions": 40}]})
        with pytest.raises(InvalidRequest, match=r"instances\[0\]"):
            engine.score({"instances": [{"id": 1}]})
    assert check["usecase"] == TOY and 0.0 < check["example_probability"] < 1.0
    preds = res.response["predictions"]
    assert len(preds) == 2 and all(0.0 < p["probability"] < 1.0 for p in preds)
    assert preds[1]["probability"] > preds[0]["probability"]  # more usage, higher conversion (the truth)
    assert preds[0]["label"] == int(preds[0]["probability"] >= engine.threshold)
