"""Feature selection, training, threshold, evaluation and tracking settings (docs/science.md §4, §5)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from clinrisk.config.base import SAFE_NAME, Section


class SelectConfig(Section):
    """Feature selection under a memory budget: cheap filters, then stability selection with probes."""

    enabled: bool = True
    memory_budget_mb: int = Field(1500, ge=64, description="peak memory the step may plan for")
    sample_rows: int = Field(
        80_000, ge=1_000, description="patient-grouped training sample for filters + stability fits"
    )
    max_missing_share: float = Field(0.995, gt=0.0, le=1.0)
    near_constant_share: float = Field(
        0.9995, gt=0.5, le=1.0, description="drop when one value covers >= this share of non-missing rows"
    )
    correlation_threshold: float = Field(0.95, gt=0.0, le=1.0, description="Spearman |rho| clustering cut")
    min_copresence: float = Field(
        0.9, ge=0.0, le=1.0, description="correlated only if present on nearly the same rows (Jaccard)"
    )
    n_probes: int = Field(20, ge=1, le=100)
    rounds: int = Field(10, ge=2, le=100)
    min_frequency: float = Field(0.7, ge=0.0, le=1.0)
    probe_rounds_boost: int = Field(40, ge=10, le=2000, description="boosting rounds per stability fit")
    num_leaves: int = Field(15, ge=2, le=256, description="leaves of the shallow stability fits")
    probe_threshold: Literal["max", "matched"] = Field(
        "matched",
        description="max: beat every probe; matched: beat probes with no more distinct values or split freedom",
    )
    compare_rounds: int = Field(
        150, ge=10, le=5000, description="boosting rounds of the full-vs-selected check"
    )
    num_threads: int = Field(0, ge=0, description="LightGBM threads; 0 = train.num_threads, else the cores")
    apply: Literal["if_non_inferior", "always"] = Field(
        "if_non_inferior",
        description="if_non_inferior: train on the selection only when it passed its check, else all "
        "features; always: train on it regardless (experiments that measure what selection costs)",
    )


# clinrisk.calibration.METHODS mirrors this (a test pins them equal)
CALIBRATION_METHODS: tuple[str, ...] = ("select", "logistic", "beta", "isotonic", "auto", "none")


# Kubernetes quantities as the API accepts them for cpu/memory (e.g. "1", "500m", "2Gi", "1500M").
_CPU = r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$"
_MEMORY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$"
# RFC 1123 label: a DaskCluster name prefix and a namespace.
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


# A label key as Kubernetes accepts it: an optional DNS-subdomain prefix, then a name of up to 63 characters.
_LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
_LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"


class DaskToleration(Section):
    """One toleration of the DaskCluster's pods (a tainted node pool for training)."""

    key: str = Field(pattern=_LABEL_KEY, max_length=316)
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = Field("", pattern=_LABEL_VALUE)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class DaskConfig(Section):
    """Where ``train.engine: dask`` gets its dask cluster (src/clinrisk/dask_k8s.py, docs/scaling.md)."""

    cluster: Literal["local", "kubernetes"] = Field(
        "local",
        description="local: a LocalCluster of train.dask_workers processes over loopback | kubernetes: a "
        "DaskCluster created through the Dask Kubernetes operator for the fit and deleted after it",
    )
    namespace: str = Field("clinrisk", pattern=_DNS_LABEL, max_length=63, description="of the DaskCluster")
    name_prefix: str = Field(
        "clinrisk-train", pattern=_DNS_LABEL, max_length=40, description="DaskCluster name = prefix-<random>"
    )
    image: str = Field(
        "clinrisk/pipeline:0.1.0",
        pattern=r"^[^\s]+$",
        description="scheduler and worker image: the pipeline image (workers unpickle clinrisk's shard readers "
        "and need the same dask, distributed and lightgbm)",
    )
    data_volume_claim: str | None = Field(
        None,
        pattern=_DNS_LABEL,
        description="PVC holding the pipeline's artifacts, mounted in every worker at data_mount_path (the "
        "workers read the feature shards themselves; the train pod must see them at the same path)",
    )
    data_mount_path: str = Field("/data", pattern=r"^/[^\s]*$")
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="nodeSelector of the scheduler and worker pods (a node pool's labels)",
    )
    tolerations: list[DaskToleration] = Field(
        default_factory=list, description="tolerations of the scheduler and worker pods (a tainted node pool)"
    )
    worker_cpu: str = Field("1", pattern=_CPU, description="each worker's CPU request and limit")
    worker_memory: str = Field("2Gi", pattern=_MEMORY, description="each worker's memory request and limit")
    scheduler_cpu: str = Field("1", pattern=_CPU)
    scheduler_memory: str = Field("1Gi", pattern=_MEMORY)
    timeout_s: float = Field(
        300.0, gt=0, le=3600, description="for the cluster to come up, for its workers to join, for teardown"
    )
    kubeconfig: str | None = Field(
        None, description="kubeconfig file; unset: the pod's service account, else ~/.kube/config"
    )
    scheduler_address: str | None = Field(
        None,
        pattern=r"^(tcp|tls)://[^\s/]+:[0-9]+$",
        description="connect here instead of the scheduler Service's cluster IP (a driver outside the "
        "cluster through kubectl port-forward)",
    )

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for key, val in value.items():
            if not re.match(_LABEL_KEY, key) or len(key) > 316:
                raise ValueError(f"{key!r} is not a Kubernetes label key")
            if not re.match(_LABEL_VALUE, val):
                raise ValueError(f"{key}: {val!r} is not a Kubernetes label value")
        return value


# The default training-row budget: above the default run's training split (2M raw rows → 438,938 training
# rows), so the default model is unchanged, and what holds the train step's memory flat at 20M raw rows
# (4.4M training rows) and up (docs/scaling.md, "A training-row budget").
MAX_TRAIN_ROWS = 1_000_000


class TrainConfig(Section):
    """LightGBM settings; imbalance handled by calibration + threshold, not resampling."""

    num_boost_round: int = Field(2000, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)
    learning_rate: float = Field(0.05, gt=0.0, le=1.0)
    num_leaves: int = Field(31, ge=2, le=4096)
    min_data_in_leaf: int = Field(200, ge=1)
    feature_fraction: float = Field(0.8, gt=0.0, le=1.0)
    bagging_fraction: float = Field(0.8, gt=0.0, le=1.0)
    bagging_freq: int = Field(1, ge=0)
    lambda_l2: float = Field(1.0, ge=0.0)
    max_bin: int = Field(255, ge=2, le=255)
    num_threads: int = Field(0, ge=0, description="0 = all cores")
    positive_class_weight: float = Field(1.0, gt=0.0, description=">1 weights positives; odds corrected")
    calibration: str = Field(
        "select",
        description="select (chosen on held-out validation folds, AP loss <= 0.002) | logistic | beta | isotonic "
        "| auto | none",
    )
    engine: Literal["lightgbm", "dask"] = Field(
        "lightgbm",
        description="lightgbm: one process, out-of-core lgb.Sequence | dask: lightgbm.dask on a local "
        "dask.distributed cluster (train.dask_workers workers; train.dask.cluster says where)",
    )
    dask_workers: int = Field(2, ge=1, le=64, description="worker processes of the dask engine's cluster")
    dask: DaskConfig = Field(default_factory=DaskConfig)
    max_rows: int | None = Field(
        MAX_TRAIN_ROWS,
        ge=1000,
        description="training-row budget: above it, a seeded uniform sample of this many training rows is "
        "fitted (LightGBM's memory grows with the rows it trains on); null = every training row",
    )

    @field_validator("calibration")
    @classmethod
    def _known_calibration(cls, v: str) -> str:
        if v not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {v!r} (known: {', '.join(CALIBRATION_METHODS)})")
        return v


class ThresholdConfig(Section):
    """Decision threshold from decision-curve net benefit (docs/science.md §4.2)."""

    threshold_probability: float = Field(0.10, gt=0.0, lt=1.0, description="p_t")
    sensitivity_range: tuple[float, float] = (0.05, 0.20)
    alert_capacity: float | None = Field(None, gt=0.0, le=1.0, description="max share of rows alerted")


class EvaluateConfig(Section):
    """Evaluation: bootstrap, patient-level horizons, slices, error analysis (docs/science.md §4.3, §7)."""

    bootstrap_replicates: int = Field(200, ge=10, le=10_000)
    workers: int = Field(
        0, ge=0, le=64, description="processes for the bootstraps (same result for any); 0 = run.workers"
    )
    ci_level: float = Field(0.95, gt=0.5, lt=1.0, description="patient-cluster bootstrap CI level")
    patient_k_years: list[int] = Field(default_factory=lambda: [1, 2, 3])
    slice_auc_delta: float = Field(0.03, gt=0.0)
    slice_oe_bounds: tuple[float, float] = (0.8, 1.25)
    slice_columns: list[str] = Field(
        default_factory=lambda: ["insurance", "ethnicity", "age_band", "sex"],
        description="age_band is derived from the age column",
    )
    age_band_edges: tuple[int, int] = Field((45, 65), description="<45, 45-64, >=65")
    top_k_fractions: list[float] = Field(
        default_factory=list,
        description="capacity fractions for lift/gains at top-k per period (default: the use case's)",
    )
    net_benefit_range: tuple[float, float] = (0.02, 0.30)
    top_k_errors: int = Field(50, ge=0, le=10_000, description="highest-risk FPs / lowest-risk FNs listed")
    top_contributions: int = Field(5, ge=1, le=50, description="SHAP contributions shown per listed row")
    max_curve_points: int = Field(200, ge=10, le=10_000, description="ROC/PR points kept for KFP")
    # Error-analysis roles -> feature column; unset roles are detected from the column names.
    error_columns: dict[str, str] = Field(
        default_factory=dict,
        description="keys: hba1c_count, hba1c_years_since, visits, bmi",
    )

    @model_validator(mode="after")
    def _sane(self) -> EvaluateConfig:
        lo, hi = self.slice_oe_bounds
        if not 0 < lo < 1 < hi:
            raise ValueError("evaluate.slice_oe_bounds: need 0 < lo < 1 < hi")
        a, b = self.age_band_edges
        if not 0 < a < b:
            raise ValueError("evaluate.age_band_edges: need 0 < first < second")
        nlo, nhi = self.net_benefit_range
        if not 0 < nlo < nhi < 1:
            raise ValueError("evaluate.net_benefit_range: need 0 < lo < hi < 1")
        if any(not 0 < f <= 1 for f in self.top_k_fractions):
            raise ValueError("evaluate.top_k_fractions: each fraction must be in (0, 1]")
        if any(k < 1 for k in self.patient_k_years):
            raise ValueError("evaluate.patient_k_years: years must be >= 1")
        unknown = set(self.error_columns) - {"hba1c_count", "hba1c_years_since", "visits", "bmi"}
        if unknown:
            raise ValueError(f"evaluate.error_columns: unknown roles {sorted(unknown)}")
        return self


class TrackingConfig(Section):
    """MLflow tracking and registry. tracking_uri None = sqlite under run.output_dir."""

    tracking_uri: str | None = None
    # The tracking server's --artifacts-destination (s3://mlflow on kind, gs://BUCKET/mlflow on GKE): a
    # proxied ``mlflow-artifacts:/…`` location maps onto it for KServe's storage initializer.
    artifacts_destination: str | None = None
    experiment_name: str = Field("clinrisk", min_length=1)
    registered_model_name: str = Field("clinrisk", pattern=SAFE_NAME, max_length=128)
    enabled: bool = True
