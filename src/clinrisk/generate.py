"""Public API of the synthetic patient-year generator (docs/science.md §1; implementation in
``clinrisk.generator``): plan → shards (Kubeflow ParallelFor) → finalize, or ``generate_dataset``."""

from __future__ import annotations

from clinrisk.generator.dataset import (
    CONFIG_FILE,
    GENERATOR_VERSION,
    MANIFEST,
    OBSERVED_DIR,
    TRUTH_DIR,
    finalize_generation,
    generate_dataset,
    generate_shard,
    label_row_counts,
    plan_generation,
)
from clinrisk.generator.render import si_site
from clinrisk.generator.schema import (
    DX_COLUMNS,
    LAB_FIELDS,
    OBSERVED_SCHEMA,
    RX_COLUMNS,
    TRUTH_SCHEMA,
    UNIT_LEVELS,
    other_dx_codes,
)
from clinrisk.generator.simulate import DELAY_PMFS, DELAY_SUPPORT, delay_pmf

__all__ = [
    "CONFIG_FILE",
    "DELAY_PMFS",
    "DELAY_SUPPORT",
    "DX_COLUMNS",
    "GENERATOR_VERSION",
    "LAB_FIELDS",
    "MANIFEST",
    "OBSERVED_DIR",
    "OBSERVED_SCHEMA",
    "RX_COLUMNS",
    "TRUTH_DIR",
    "TRUTH_SCHEMA",
    "UNIT_LEVELS",
    "delay_pmf",
    "finalize_generation",
    "generate_dataset",
    "generate_shard",
    "label_row_counts",
    "other_dx_codes",
    "plan_generation",
    "si_site",
]
