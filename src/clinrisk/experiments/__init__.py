"""Experiment suites: named pipeline runs from one base config, compared with paired bootstraps.

A suite YAML (``configs/experiments/*.yaml``)::

    name: uncertainty
    description: ...
    base_config: configs/tiny.yaml        # relative to the working directory or to the suite file
    base_overrides: [split.temporal=false]
    matrix:                               # optional cells; every arm runs in every cell
      - {name: none, overrides: [generate.delay_severity=none]}
    runs:                                 # arms, listed in increasing complexity (one-SE rule order)
      - {name: E0, key_change: "naive recorded labels", overrides: [labels.strategy=E0]}
    baseline: E0                          # arm every other arm of the same cell is compared with
    winner: {rule: best_with_ci, metric: brier, labels: true, split: test}

Override order per run: base_overrides, cell overrides, arm overrides, then the caller's ``--set``s (scale
knobs such as ``generate.n_patients=20000``). Every run goes through the same pipeline
(:func:`clinrisk.pipeline_runner.run_local`, or ``submit_pipeline`` on a Kubeflow host) and is an MLflow
run in the suite's experiment. :func:`compare_runs` joins test predictions on (patient_id, year) and
reports, per run, true- and recorded-label metrics and paired patient-cluster bootstrap deltas vs the
baseline, then applies the stated winner rule:

- ``best_with_ci``: within each cell, the best point estimate among arms whose paired-difference CI vs
  the baseline excludes 0 in the improving direction; none → the baseline stays.
- ``one_se`` (paired, per cell): the best arm by point metric; every other arm is joined with it on
  (patient_id, year) and one patient-cluster bootstrap gives the SE of their paired difference; the first
  arm (listed order = simplest first) with (best − arm) ≤ that SE wins (docs/science.md §3.2), on ``split``
  (validation: both labels from the features dataset, scored with each run's bundle).

Local suites reuse generated+validated data across arms with identical generate/validate sections and
seed (:mod:`clinrisk.datacache`).

A use case whose runs are not (patient_id, year) predictions (segmentation: Dice per validation image)
declares :class:`clinrisk.usecases.base.ExperimentHooks` on its plugin: how to run one config and how to read a
run's per-unit scores and their group. ``run_suite`` then runs each arm through the hook (in-process, one MLflow
store for the suite), and ``compare_runs`` pairs the runs on the unit, bootstraps by group and writes the same
three report files (:mod:`.units`).

Modules by job: :mod:`.suite` (the suite model and its runs), :mod:`.running` (running them),
:mod:`.comparison` (paired comparison and winner rules), :mod:`.units` (the same for a use case's per-unit
scores), :mod:`.render` (the report). Their public names are importable from here.
"""

from __future__ import annotations

from clinrisk.experiments.comparison import (
    choose_winner,
    compare_runs,
    one_se_winner,
    paired_deltas,
    point_metrics,
    selection_summary,
)
from clinrisk.experiments.render import log_comparison, render_comparison
from clinrisk.experiments.running import (
    data_cache_info,
    locate_outputs,
    reusable_runs,
    run_suite,
    tag_data_reuse,
)
from clinrisk.experiments.suite import (
    COMPARISON_HTML,
    COMPARISON_JSON,
    COMPARISON_MD,
    LABEL_COLUMNS,
    METRIC_DIRECTION,
    SUITE_RESULT,
    TABLE_METRICS,
    ArmSpec,
    CellSpec,
    SuiteSpec,
    WinnerRule,
    expand_runs,
    experiments_config,
    load_suite,
    resolve_base_config,
    slug,
)
from clinrisk.experiments.units import compare_unit_runs, experiment_hooks, paired_mean_diff

__all__ = [
    "COMPARISON_HTML",
    "COMPARISON_JSON",
    "COMPARISON_MD",
    "LABEL_COLUMNS",
    "METRIC_DIRECTION",
    "SUITE_RESULT",
    "TABLE_METRICS",
    "ArmSpec",
    "CellSpec",
    "SuiteSpec",
    "WinnerRule",
    "choose_winner",
    "compare_runs",
    "compare_unit_runs",
    "data_cache_info",
    "expand_runs",
    "experiment_hooks",
    "experiments_config",
    "load_suite",
    "locate_outputs",
    "log_comparison",
    "one_se_winner",
    "paired_deltas",
    "paired_mean_diff",
    "point_metrics",
    "render_comparison",
    "resolve_base_config",
    "reusable_runs",
    "run_suite",
    "selection_summary",
    "slug",
    "tag_data_reuse",
]
