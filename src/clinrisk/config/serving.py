"""Serving settings for the KServe V1 predictor."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clinrisk.config.base import Section


class ServingConfig(Section):
    """KServe predictor: bind address, limits, out-of-distribution policy."""

    model_name: str = Field(
        "clinrisk",
        pattern=r"^[a-z0-9-]+$",
        description="KServe model name (/v1/models/<name>) and InferenceService name; default: the use case's",
    )
    namespace: str = Field(
        "clinrisk",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Kubernetes namespace of the InferenceService; default: the use case's",
    )
    host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=1, le=65535)
    grpc_enabled: bool = False
    grpc_port: int = Field(8081, ge=1, le=65535)
    max_instances: int = Field(256, ge=1, le=100_000)
    max_history_years: int = Field(
        40,
        ge=2,
        le=120,
        description="most yearly records (and calendar span) one instance's history may hold; at least X+1. "
        "The full history gives exactly the training features (LOCF, ever-flags, carried height)",
    )
    reject_out_of_distribution: bool = False
    ood_z: float = Field(3.0, gt=0.0)
    reason_codes_top_k: int = Field(0, ge=0, le=50)
    log_patient_data: bool = False
    request_log_dir: str | None = Field(None, description="Parquet sink for served feature vectors")
    feature_engine: Literal["rowwise", "polars"] = Field(
        "rowwise",
        description="rowwise: clinrisk.features_rowwise (bitwise equal to the feature function, checked at "
        "start-up; ~100x cheaper per request); polars: the feature function's lazy query itself",
    )
