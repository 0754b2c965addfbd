"""MLflow round trip (slowish; kept to one registry test): log config/metrics, register the bundle as a
pyfunc model, reload it through the registry alias and compare its predictions with the serving engine's
for the same raw-history instance (one contract with KServe)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from clinrisk.bundle import load_bundle
from clinrisk.config import flatten_config
from clinrisk.errors import DataError
from clinrisk.io import list_shards
from tests.model.conftest import small_config


def test_flatten_metrics():
    from clinrisk.tracking import flatten_metrics

    flat = flatten_metrics(
        {"validation": {"auc": 0.8, "n": 10, "curve": [1, 2], "bad": float("nan")}, "ok": True}
    )
    assert flat == {"validation.auc": 0.8, "validation.n": 10.0, "ok": 1.0}


def test_mlflow_round_trip(trained_bundle_dir: Path, synthetic_features_dir: Path, tmp_path: Path):
    import mlflow
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from clinrisk import registry, tracking

    cfg = small_config(tmp_path)
    run_dir = tmp_path / "run"
    run_id = tracking.start_run(cfg, run_dir, kfp_run_id="kfp-123")
    assert tracking.tracking_uri(cfg, run_dir) == f"sqlite:///{(run_dir / 'mlflow' / 'mlflow.db').resolve()}"
    n_params = tracking.log_config(cfg, run_id)
    bundle = load_bundle(trained_bundle_dir)
    tracking.log_metrics(bundle.metrics, run_id)
    # A second step (e.g. evaluate) logs into the same run by id.
    tracking.log_metrics({"test": {"auc": 0.5}}, run_id)
    version = registry.register_bundle(cfg, trained_bundle_dir, run_id, run_dir=run_dir)
    tracking.end_run(run_id)

    run = MlflowClient().get_run(run_id)
    assert len(run.data.params) == n_params == len(flatten_config(cfg))
    assert run.data.tags["kfp.run_id"] == "kfp-123"
    assert run.data.metrics["validation.auc"] == pytest.approx(bundle.metrics["validation"]["auc"])
    assert run.data.metrics["test.auc"] == 0.5
    assert (run_dir / "mlflow" / "artifacts").is_dir()

    # One contract with KServe: raw-history instances in, the V1 predictions out, through the serving engine.
    from clinrisk.config import ServingConfig
    from clinrisk.serving.inference import EXAMPLE_INSTANCE, ServingEngine

    want = ServingEngine.from_dir(trained_bundle_dir, ServingConfig()).score(
        {"instances": [EXAMPLE_INSTANCE]}
    )
    model = mlflow.pyfunc.load_model(f"models:/{cfg.tracking.registered_model_name}@challenger")
    got = model.predict([EXAMPLE_INSTANCE])
    assert got == want.response["predictions"]
    assert got[0]["probability"] == want.probabilities[0]  # bit for bit
    assert model.predict({"instances": [EXAMPLE_INSTANCE]}) == got
    assert model.metadata.get_input_schema() is None  # the serving engine validates instances, not MLflow
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"instances\[0\]"):
        model.predict([{**EXAMPLE_INSTANCE, "history": []}])
    # The feature frame is not the contract any more: it is refused with the serving engine's message.
    frame = pl.read_parquet(str(list_shards(synthetic_features_dir)[0])).head(2)
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"instances\[0\]"):
        model.predict(frame.to_pandas())

    local = tracking.resolve_model(cfg, "challenger", tmp_path / "dl", run_dir=run_dir)
    assert load_bundle(local).version == bundle.version
    same = tracking.resolve_model(cfg, version, tmp_path / "dl2", run_dir=run_dir)
    assert load_bundle(same).version == bundle.version
    client = MlflowClient()
    mv = client.get_model_version_by_alias(cfg.tracking.registered_model_name, "challenger")
    assert str(mv.version) == version and mv.tags["bundle_version"] == bundle.version
    with pytest.raises(DataError, match="cannot resolve"):
        tracking.resolve_model(cfg, "no-such-alias", tmp_path / "dl3", run_dir=run_dir)

    # The storage location KServe's storage initializer would download: the bundle directory itself.
    storage = tracking.bundle_storage_uri(cfg, "challenger", run_dir=run_dir)
    assert storage == tracking.bundle_storage_uri(cfg, version, run_dir=run_dir)
    assert storage.startswith((run_dir / "mlflow" / "artifacts").resolve().as_uri() + "/")
    assert load_bundle(Path(storage.removeprefix("file://"))).version == bundle.version
    with pytest.raises(DataError, match="cannot resolve"):
        tracking.bundle_storage_uri(cfg, "no-such-alias", run_dir=run_dir)
    # What the deploy step does with register's output; non-registry URIs pass through untouched.
    registry_uri = tracking.model_uri(cfg, version)
    assert tracking.resolve_storage_uri(cfg, registry_uri, run_dir=run_dir) == storage
    assert tracking.resolve_storage_uri(cfg, "s3://b/k", run_dir=run_dir) == "s3://b/k"


def test_explicit_sqlite_uri_keeps_artifacts_next_to_the_db(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from clinrisk.config import load_config
    from clinrisk.tracking import configure

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "store" / "mlflow.db"
    cfg = load_config(None, [f"tracking.tracking_uri=sqlite:///{db}", "tracking.experiment_name=art-loc"])
    configure(cfg)
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(f"sqlite:///{db}").get_experiment_by_name("art-loc")
    assert exp.artifact_location == (db.parent / "artifacts").resolve().as_uri()
    assert not (tmp_path / "mlruns").exists()
