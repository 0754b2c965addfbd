"""The lead-conversion use case through the shared KFP pipeline (kfp.local), tracking and registry.

Same checks as the clinical pipeline test, on ``configs/leads/tiny.yaml``: every task runs, the plan owns
the fan-out, artifacts are valid, the model is registered under the use case's name, the data hash is
reproducible, and a failing stage publishes nothing. Then the leads-specific evaluation (lift/gains at
top-k against the generator's truth) on the pipeline's own test predictions.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from clinrisk.bundle import load_bundle
from clinrisk.config import load_config
from clinrisk.errors import StageError
from clinrisk.io import list_shards, read_json
from clinrisk.pipeline_runner import run_local
from clinrisk.stages.catalog import FUSED_MODEL_TASK, Catalog
from clinrisk.usecases import get
from clinrisk.usecases.leads.evaluate import evaluate_leads

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "configs" / "leads" / "tiny.yaml"
FAST = [
    "select.rounds=2",
    "select.probe_rounds_boost=20",
    "train.num_boost_round=80",
    "evaluate.bootstrap_replicates=10",
]
TASKS = [
    "resolve-config", "start-tracking", "plan-generation", "merge-data", "fit-feature-spec",
    "merge-features", FUSED_MODEL_TASK,  # select → register: one local task
]  # fmt: skip
LEADS = get("leads")


@pytest.fixture(scope="module")
def leads_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("leads_pipeline")
    return run_local(TINY, [f"run.output_dir={out}", *FAST])


def test_every_task_ran_and_artifacts_are_valid(leads_run) -> None:  # type: ignore[no-untyped-def]
    d = leads_run.pipeline_dir
    cfg = load_config(TINY, FAST)
    n = LEADS.source.plan(cfg)["n_shards"]
    assert n == 3
    for task in TASKS:
        assert (d / task).is_dir(), task
    # The local runner groups the shards into at most run.workers tasks per fan-out (the plan owns that too).
    groups = read_json(d / "plan-generation" / "plan" / "task_groups.json")["groups"]
    assert sorted(s for g in groups for s in g) == list(range(n))
    assert len(groups) == min(n, cfg.run.workers)
    for loop in ("for-loop-2", "for-loop-3"):  # group 1 is the exit handler around the DAG
        assert len(list(d.glob(f"{loop}-iteration-*"))) == len(groups)
    manifest = read_json(d / "merge-data" / "raw" / "manifest.json")
    assert manifest["n_shards"] == n and manifest["rows"] == sum(manifest["rows_per_shard"])
    for table in LEADS.source.tables:
        assert len(list_shards(d / "merge-data" / "raw" / table)) == n
        assert len(list_shards(d / "merge-data" / "validated" / table)) == n
    report = read_json(d / "merge-data" / "validated" / "validation" / "report.json")
    assert report["rows_in"] == report["rows_valid"] + report["rows_quarantined"] == manifest["rows"]
    spec = read_json(d / "merge-features" / "features" / "feature_spec.json")
    assert spec["usecase"] == "leads"
    feats = list_shards(d / "merge-features" / "features")
    assert len(feats) == n
    assert set(spec["feature_names"]) <= set(pl.read_parquet(feats[0]).columns)
    io = Catalog.for_kfp_run(d)
    bundle = load_bundle(io.path("model_bundle"))
    assert set(bundle.feature_names) <= set(spec["feature_names"])
    assert read_json(io.path("evaluation") / "metrics.json")["oracle"]
    assert leads_run.model_uri == "models:/leads/1"


def test_model_is_tracked_and_registered_under_the_usecase_names(leads_run) -> None:  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    cfg = load_config(leads_run.pipeline_dir / "resolve-config" / "config" / "config.yaml")
    assert cfg.tracking.registered_model_name == LEADS.names.model_name
    # The store the run used, for tracking AND registry: an earlier test in this process may have set the
    # global registry URI (tracking.configure calls mlflow.set_registry_uri).
    client = MlflowClient(tracking_uri=leads_run.tracking_uri, registry_uri=leads_run.tracking_uri)
    (version,) = client.search_model_versions(f"name='{LEADS.names.model_name}'")
    assert str(version.version) == "1"
    run = client.get_run(version.run_id)
    assert client.get_experiment(run.info.experiment_id).name == LEADS.names.experiment
    assert run.data.params.get("run.usecase") == "leads"


def test_registry_holds_only_small_artefacts(leads_run) -> None:  # type: ignore[no-untyped-def]
    from tests.pipeline.test_registry_pipeline import (
        assert_small_and_without_row_level_data,
        run_artefacts,
    )

    files = run_artefacts(leads_run.tracking_uri, LEADS.names.model_name, "1")
    assert_small_and_without_row_level_data(files)
    assert {"validation/report.json", "evaluation/report.md", "config/config.yaml", "MLmodel"} <= set(files)


def test_same_config_same_data_hash(leads_run) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(TINY, FAST)
    plan = LEADS.source.plan(cfg)
    shards = {s: LEADS.source.generate_shard(cfg, plan, s) for s in range(plan["n_shards"])}
    again = LEADS.source.manifest(cfg, plan, shards.__getitem__)
    first = read_json(leads_run.pipeline_dir / "merge-data" / "raw" / "manifest.json")
    assert again["observed_hash"] == first["observed_hash"]


def test_lift_and_gains_on_the_pipeline_test_predictions(leads_run) -> None:  # type: ignore[no-untyped-def]
    d = leads_run.pipeline_dir
    pred = pl.read_parquet(Catalog.for_kfp_run(d).path("evaluation") / "predictions.parquet")
    truth = pl.concat(
        pl.read_parquet(
            f, columns=["patient_id", "year", "eval_oracle_risk", "INDUSTRY_GROUP", "EMPLOYEE_RANGE"]
        )
        for f in list_shards(d / "merge-features" / "features")
    )
    scored = pred.join(truth, on=["patient_id", "year"], how="left").select(
        pl.col("patient_id").alias("ID"),
        pl.col("year").alias("SNAPSHOT"),
        pl.col("probability").alias("score"),
        pl.col("label_rec").alias("LABEL"),
        pl.col("eval_oracle_risk").cast(pl.Float64).alias("P_TRUE"),
        "INDUSTRY_GROUP",
        "EMPLOYEE_RANGE",
    )
    assert scored["P_TRUE"].null_count() == 0
    res = evaluate_leads(
        scored, list(LEADS.labels.top_k_fractions), list(LEADS.labels.slices), min_slice_rows=30
    )
    by_f = {r["fraction"]: r for r in res["top_k"]}
    # a model better than chance: the top 10 % of each snapshot's leads convert at well over the base rate
    assert by_f[0.1]["lift"] > 1.5 and 0 < by_f[0.1]["capture_vs_oracle"] <= 1.5
    assert by_f[0.2]["gains"] > 0.2
    assert {s["column"] for s in res["slices"]} == set(LEADS.labels.slices)
    # the shared evaluation (metrics.json, report.md) carries the same lift/gains, from the same function
    shared = read_json(Catalog.for_kfp_run(d).path("evaluation") / "metrics.json")["top_k"]
    assert [r["fraction"] for r in shared["recorded"]] == list(LEADS.labels.top_k_fractions)
    for mine, theirs in zip(shared["recorded"], res["top_k"], strict=True):
        assert mine["rows_worked"] == theirs["leads_worked"]
        for k in ("lift", "gains", "capture_vs_oracle"):
            assert mine[k] == pytest.approx(theirs[k]), k
    assert (
        "## Lift and gains at top-k" in (Catalog.for_kfp_run(d).path("evaluation") / "report.md").read_text()
    )


def test_failed_stage_stops_the_run_and_publishes_nothing(tmp_path: Path) -> None:
    # the snapshot grid starts after the data ends: the features stage fails with a DataError
    with pytest.raises(StageError):
        run_local(TINY, [f"run.output_dir={tmp_path}", *FAST, "params.features.first_snapshot=2030-01-06"])
    run_dir = next(tmp_path.glob("leads-tiny/runs/*/clinrisk-training-*"))
    assert (run_dir / "merge-data" / "validated").exists()
    assert not (run_dir / "merge-features" / "features").exists()
    assert not (run_dir / "train").exists()


# ------------------------------------------------------------------ serving the pipeline's leads model (V1)


def _test_rows_and_instances(leads_run, n: int = 6):  # type: ignore[no-untyped-def]
    """Test-split rows of the feature table and the V1 instances rebuilt from the validated tables."""
    d = leads_run.pipeline_dir
    table = pl.concat(pl.read_parquet(f) for f in list_shards(d / "merge-features" / "features"))
    rows = table.filter(pl.col("split") == "test").sample(n, seed=5).sort("patient_id", "year")
    validated = {
        t: pl.concat(pl.read_parquet(f) for f in list_shards(d / "merge-data" / "validated" / t))
        for t in LEADS.source.tables
    }
    keys = list(zip(rows["patient_id"].to_list(), rows["year"].to_list(), strict=True))
    return rows, LEADS.serving.instances(validated, keys)


def test_serving_engine_scores_v1_instances_like_the_bundle_scores_training_rows(leads_run) -> None:  # type: ignore[no-untyped-def]
    from clinrisk.serving.inference import ServingEngine
    from clinrisk.serving.request import InvalidRequest

    d = leads_run.pipeline_dir
    cfg = load_config(d / "resolve-config" / "config" / "config.yaml")
    bundle = load_bundle(Catalog.for_kfp_run(d).path("model_bundle"))
    engine = ServingEngine.from_dir(Catalog.for_kfp_run(d).path("model_bundle"), cfg.serving)
    check = engine.self_check()
    assert check["usecase"] == "leads" and 0.0 < check["example_probability"] < 1.0
    rows, instances = _test_rows_and_instances(leads_run)
    got = [p["probability"] for p in engine.score({"instances": instances}).response["predictions"]]
    want = bundle.predict_proba(rows.select(bundle.feature_names)).tolist()
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    bad = {**instances[0], "usage": [{**instances[0]["usage"][0], "ACTIONS_EMAIL": -1}]}
    with pytest.raises(InvalidRequest, match=r"instances\[1\]\.usage\[0\]\.ACTIONS_EMAIL"):
        engine.score({"instances": [instances[0], bad]})


def test_kserve_model_server_answers_v1_for_leads(leads_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The real `clinrisk serve` process (kserve.ModelServer) on 127.0.0.1 with the leads bundle."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    from clinrisk.serving.client import predict, wait_ready

    d = leads_run.pipeline_dir
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cmd = [
        sys.executable, "-m", "clinrisk", "serve", "--config", str(TINY), "--bundle", str(Catalog.for_kfp_run(d).path("model_bundle")),
        "--set", f"serving.http_port={port}", "--set", "serving.host=127.0.0.1",
    ]  # fmt: skip
    log = tmp_path / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    name = LEADS.names.model_name
    try:
        try:
            assert wait_ready(url, model_name=name, timeout_s=180) == {"name": name, "ready": True}
        except Exception:
            raise AssertionError(f"server did not start:\n{log.read_text()[-3000:]}") from None
        rows, instances = _test_rows_and_instances(leads_run, n=3)
        preds = predict(url, instances, model_name=name)["predictions"]
        bundle = load_bundle(Catalog.for_kfp_run(d).path("model_bundle"))
        want = bundle.predict_proba(rows.select(bundle.feature_names)).tolist()
        assert [p["probability"] for p in preds] == pytest.approx(want, rel=1e-9, abs=1e-12)
        future = {**instances[0], "as_of": instances[0]["usage"][-1]["WHEN_TIMESTAMP"][:10]}
        r = httpx.post(f"{url}/v1/models/{name}:predict", json={"instances": [future]}, timeout=30)
        assert r.status_code == 400 and "instances[0].usage" in r.json()["error"]
        r = httpx.post(
            f"{url}/v1/models/{name}:predict", content="{bad", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
