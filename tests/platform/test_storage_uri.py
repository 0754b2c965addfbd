"""Deploy resolution: every artifact location MLflow can hand back maps to a URI KServe's storage initializer
reads (kserve_storage.Storage.download), or fails with a message naming the URI or the missing setting."""

from __future__ import annotations

import pytest

from clinrisk.errors import ConfigError, DataError
from clinrisk.tracking import kserve_storage_uri

BUNDLE = "1/models/m-0123abcd/artifacts/bundle"


def test_proxied_mlflow_artifacts_map_onto_the_servers_destination() -> None:
    # What MLflow 3 returns when the server runs with --serve-artifacts (the chart's setting).
    assert kserve_storage_uri(f"mlflow-artifacts:/{BUNDLE}", "s3://mlflow") == f"s3://mlflow/{BUNDLE}"
    # The host-qualified form and a trailing slash on either side change nothing.
    got = kserve_storage_uri(f"mlflow-artifacts://mlflow.mlflow.svc:5000/{BUNDLE}/", "s3://mlflow/")
    assert got == f"s3://mlflow/{BUNDLE}"
    # GKE: destination is a prefix inside a bucket.
    assert kserve_storage_uri(f"mlflow-artifacts:/{BUNDLE}", "gs://b/mlflow") == f"gs://b/mlflow/{BUNDLE}"


def test_proxied_artifacts_without_a_destination_name_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"tracking\.artifacts_destination: not set.*mlflow-artifacts:/1/"):
        kserve_storage_uri(f"mlflow-artifacts:/{BUNDLE}", None)
    with pytest.raises(ConfigError, match="must be the store itself"):
        kserve_storage_uri(f"mlflow-artifacts:/{BUNDLE}", "mlflow-artifacts:/")


@pytest.mark.parametrize("uri", [f"s3://mlflow/{BUNDLE}", f"gs://bucket/mlflow/{BUNDLE}"])
def test_object_store_uris_pass_through(uri: str) -> None:
    assert kserve_storage_uri(uri, "s3://other") == uri
    assert kserve_storage_uri(uri + "/", None) == uri


@pytest.mark.parametrize("uri", [f"file:///srv/mlruns/{BUNDLE}", f"/srv/mlruns/{BUNDLE}"])
def test_local_locations_pass_through(uri: str) -> None:
    # kserve_storage reads file:// and existing paths (tier 1/2); the rollout refuses them for a cluster.
    assert kserve_storage_uri(uri, None) == uri


def test_logged_model_uri_resolves_through_its_artifact_location() -> None:
    seen: list[str] = []

    def location(uri: str) -> str:
        seen.append(uri)
        return f"mlflow-artifacts:/1/models/m-0123abcd/artifacts/{uri.split('/', 2)[2]}"

    got = kserve_storage_uri("models:/m-0123abcd/bundle", "s3://mlflow", location)
    assert got == f"s3://mlflow/{BUNDLE}" and seen == ["models:/m-0123abcd/bundle"]


@pytest.mark.parametrize("uri", ["models:/m-0123abcd/bundle", "runs:/abc/bundle", "ftp://host/x", "bundle"])
def test_unreadable_locations_are_named(uri: str) -> None:
    with pytest.raises(DataError, match=f"{uri}: artifact location has no scheme"):
        kserve_storage_uri(uri, "s3://mlflow")
