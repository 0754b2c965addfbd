"""The data catalog of a run: logical artefact names -> paths, the one output layout every stage uses.

A stage's ``run(cfg, io)`` never builds a path itself; it asks ``io`` for ``"features"``,
``"model_bundle"``, ``"evaluation"``... The CLI builds the catalog from its run folder (``<output_dir>/<name>``,
flags override single entries); the KFP steps build it from the artefact paths KFP hands them. What sits
*inside* each artefact folder is the stage's, and identical either way (a bundle is a bundle).

Where KFP puts an artefact is fixed by the DAG (kfp.local: ``<pipeline_dir>/<task>/<output>``); that binding
is declared here too (:data:`KFP_OUTPUTS`), so reading a finished run back (:meth:`Catalog.for_kfp_run`) is a
lookup, not a search. ``tests/pipeline/test_compile.py`` checks the binding against the compiled DAG.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clinrisk.errors import ConfigError

MetricLogger = Callable[[str, float], None]

# logical name -> location under a run folder (CLI). The artefacts the stages exchange.
RUN_LAYOUT: dict[str, str] = {
    "run_root": ".",  # the run folder itself (its local MLflow store: mlflow/)
    "raw": "raw",
    "raw_manifest": "raw/manifest.json",
    "truth": "raw/truth",
    "validated": "validated",
    "quarantine": "quarantine",
    "validation": "validation",
    "features": "features",
    "feature_spec": "features/feature_spec.json",
    "selection": "selection",
    "selection_file": "selection/selected_features.json",
    "model_bundle": "bundle",
    "evaluation": "evaluation",
    "predictions": "evaluation/predictions.parquet",
    "mlflow": "mlflow",  # the run's local MLflow store (tracking.tracking_uri empty)
}

# logical name -> (task, output) of the training DAG (pipelines/training.py); a file inside an output
# folder is (task, output, file).
KFP_OUTPUTS: dict[str, tuple[str, ...]] = {
    "plan": ("plan-generation", "plan", "plan.json"),
    "raw": ("merge-data", "raw"),
    "raw_manifest": ("merge-data", "raw", "manifest.json"),
    "truth": ("merge-data", "raw", "truth"),
    "validated": ("merge-data", "validated"),
    # the validated artefact carries its quarantine and report (one KFP output, published together)
    "quarantine": ("merge-data", "validated", "quarantine"),
    "validation": ("merge-data", "validated", "validation"),
    "validation_report_md": ("merge-data", "validation_report"),
    "features": ("merge-features", "features"),
    "feature_spec": ("merge-features", "features", "feature_spec.json"),
    "selection": ("select-features", "selection"),
    "selection_file": ("select-features", "selection", "selected_features.json"),
    "model_bundle": ("train", "bundle"),
    "evaluation": ("evaluate", "evaluation"),
    "predictions": ("evaluate", "evaluation", "predictions.parquet"),
    # the evaluation report as the Kubeflow UI shows it (single files: Markdown and HTML, images inlined)
    "report_md": ("evaluate", "report"),
    "report_html": ("evaluate", "report_html"),
}

# The local runner's one task for the model half (components.select_train_evaluate_register): the outputs
# of these steps, under the same output names, sit in its folder instead.
FUSED_MODEL_TASK = "select-train-evaluate-register"
FUSED_STEPS = frozenset({"select-features", "train", "evaluate", "register"})


@dataclass(frozen=True)
class Catalog:
    """Paths of one run's artefacts by logical name, plus the run's sinks for metrics and tracking.

    ``mlflow_run_id`` is the pipeline's MLflow run ("" = none: the stage logs nothing there);
    ``log_metric`` is a KFP Metrics logger (None outside KFP); ``extra`` carries KFP-only output objects
    (e.g. the ClassificationMetrics artefact) a stage may fill when present.
    """

    paths: Mapping[str, Path]
    mlflow_run_id: str = ""
    log_metric: MetricLogger | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def for_run(cls, root: str | Path, **overrides: str | Path | None) -> Catalog:
        """The run folder's layout (:data:`RUN_LAYOUT`); ``overrides`` (not None) replace single entries."""
        base = Path(root)
        return cls({name: base / rel for name, rel in RUN_LAYOUT.items()}).with_paths(**overrides)

    @classmethod
    def for_config(cls, cfg: Any, **overrides: str | Path | None) -> Catalog:
        """:meth:`for_run` of the config's run folder, ``<run.output_dir>/<run.name>``."""
        return cls.for_run(Path(cfg.run.output_dir) / cfg.run.name, **overrides)

    @classmethod
    def for_kfp_run(cls, pipeline_dir: str | Path) -> Catalog:
        """Where a kfp.local run of the training DAG left its artefacts (:data:`KFP_OUTPUTS`; a run whose
        model half was one task, :data:`FUSED_MODEL_TASK`, has those steps' outputs in its folder)."""
        base = Path(pipeline_dir)
        fused = (base / FUSED_MODEL_TASK).is_dir()
        return cls(
            {
                name: base.joinpath(FUSED_MODEL_TASK if fused and task in FUSED_STEPS else task, *rest)
                for name, (task, *rest) in KFP_OUTPUTS.items()
            }
        )

    def with_paths(self, **paths: str | Path | None) -> Catalog:
        """A copy with ``paths`` (those not None) set."""
        given = {k: Path(v) for k, v in paths.items() if v is not None}
        return replace(self, paths={**self.paths, **given})

    def path(self, name: str) -> Path:
        """The path of artefact ``name``; a ConfigError when this catalog does not know it."""
        try:
            return self.paths[name]
        except KeyError:
            known = ", ".join(sorted(self.paths)) or "none"
            raise ConfigError(f"catalog: no artefact {name!r} (known: {known})") from None

    def get(self, name: str) -> Path | None:
        """The path of artefact ``name``, or None when the catalog has no entry for it."""
        return self.paths.get(name)

    def existing(self, name: str) -> Path | None:
        """The path of artefact ``name`` if the catalog has it and it exists on disk, else None."""
        p = self.paths.get(name)
        return p if p is not None and p.exists() else None

    def log_numeric(self, metrics: Mapping[str, Any], prefix: str = "") -> None:
        """Send the numeric leaves of a (nested) metrics dict to the KFP Metrics logger, if any."""
        if self.log_metric is not None:
            log_numeric(self.log_metric, metrics, prefix)


def log_numeric(log: MetricLogger, metrics: Mapping[str, Any], prefix: str = "") -> None:
    """Call ``log(name, value)`` for every finite numeric leaf of a nested dict (bools and NaN skipped)."""
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            log_numeric(log, value, f"{name}.")
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float) and value == value:  # skip NaN
            log(name, float(value))


def flat_numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric leaves of a nested metrics dict as ``{"a.b": value}`` (what MLflow logs)."""
    out: dict[str, float] = {}
    log_numeric(out.__setitem__, metrics)
    return out
