"""Suite definitions: the YAML model of a suite, its expansion into runs, and the shared constants."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clinrisk.config.monitoring import ExperimentsConfig
from clinrisk.errors import ConfigError

SUITE_RESULT = "suite_result.json"
COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
COMPARISON_HTML = "comparison.html"  # what MLflow's artefact viewer renders (it shows .md as text)
# Metrics in the comparison table and their improving direction.
METRIC_DIRECTION: dict[str, Literal["higher", "lower"]] = {
    "brier": "lower",
    "ap": "higher",
    "net_benefit": "higher",
    "auc": "higher",
    "log_loss": "lower",
    "oe": "higher",  # shown, not ranked
    "cal_slope": "higher",
    "excess_brier": "lower",
}
TABLE_METRICS = ("brier", "ap", "net_benefit", "auc")
LABEL_COLUMNS = {"true": "eval_label_true", "recorded": "label_rec"}
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def usecase_metrics() -> set[str]:
    """Metric names declared by the registered use cases' experiment hooks (e.g. segmentation's Dice);
    which of them a suite may use is checked against its base config's use case when it runs."""
    from clinrisk.usecases import get, known

    out: set[str] = set()
    for name in known():
        hooks = get(name).experiments
        if hooks is not None:
            out |= set(hooks.metrics)
    return out


class CellSpec(_Strict):
    """One matrix cell: a name and the overrides every arm gets in it."""

    name: str = Field(min_length=1)
    overrides: list[str] = Field(default_factory=list)


class ArmSpec(_Strict):
    """One arm of the suite."""

    name: str = Field(min_length=1)
    key_change: str = ""
    overrides: list[str] = Field(default_factory=list)
    cell_overrides: dict[str, list[str]] = Field(default_factory=dict)


class WinnerRule(_Strict):
    """How the winner is chosen (stated in the report)."""

    rule: Literal["best_with_ci", "one_se"] = "best_with_ci"
    metric: str = "brier"
    labels: Literal["true", "recorded"] = "true"
    split: Literal["test", "validation"] = "test"

    @model_validator(mode="after")
    def _known(self) -> WinnerRule:
        if self.metric not in METRIC_DIRECTION and self.metric not in usecase_metrics():
            raise ValueError(f"winner.metric: unknown {self.metric!r}; known {sorted(METRIC_DIRECTION)}")
        return self

    def statement(self) -> str:
        d = METRIC_DIRECTION[self.metric]
        if self.rule == "best_with_ci":
            return (
                f"within each cell, the arm with the {'lowest' if d == 'lower' else 'highest'} "
                f"{self.labels}-label {self.metric} on {self.split} among arms whose paired "
                "patient-bootstrap CI of the difference vs the baseline excludes 0 in the improving "
                "direction; if none, the baseline"
            )
        gap = "arm − best" if d == "lower" else "best − arm"
        return (
            f"paired one-standard-error rule on {self.labels}-label {self.metric} ({self.split} split), per "
            f"cell: the best arm has the {'lowest' if d == 'lower' else 'highest'} {self.metric}; every other "
            "arm is joined with it on (patient_id, year) and one patient-cluster bootstrap (patients resampled "
            f"once per replicate, applied to both arms) gives the SE of their paired difference; an arm is "
            f"eligible when ({gap}) ≤ that SE; the winner is the first eligible arm in the listed "
            "(simplest-first) order"
        )


class SuiteSpec(_Strict):
    """A suite file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base_config: str | None = None
    base_overrides: list[str] = Field(default_factory=list)
    matrix: list[CellSpec] = Field(default_factory=list)
    runs: list[ArmSpec] = Field(min_length=1)
    baseline: str
    winner: WinnerRule = Field(default_factory=WinnerRule)

    @model_validator(mode="after")
    def _consistent(self) -> SuiteSpec:
        arms = [a.name for a in self.runs]
        if len(set(arms)) != len(arms):
            raise ValueError("runs: arm names must be unique")
        if self.baseline not in arms:
            raise ValueError(f"baseline: {self.baseline!r} is not one of the runs {arms}")
        cells = [c.name for c in self.matrix]
        if len(set(cells)) != len(cells):
            raise ValueError("matrix: cell names must be unique")
        for a in self.runs:
            bad = set(a.cell_overrides) - set(cells)
            if bad:
                raise ValueError(f"runs.{a.name}.cell_overrides: unknown cell(s) {sorted(bad)}")
        return self


def load_suite(path: str | Path) -> SuiteSpec:
    """Parse and validate a suite YAML; errors name the file and key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"suite file {p}: not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"suite file {p}: not valid YAML ({exc})") from None
    try:
        return SuiteSpec.model_validate(data)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"suite file {p}: {msgs}") from None


def resolve_base_config(suite: SuiteSpec, suite_path: Path) -> Path | None:
    """The base config path: as given if it exists from the cwd, else relative to the suite file."""
    if suite.base_config is None:
        return None
    p = Path(suite.base_config)
    if p.is_file():
        return p
    q = Path(suite_path).parent / p
    if q.is_file():
        return q
    raise ConfigError(f"suite {suite.name}: base_config {suite.base_config} not found")


def expand_runs(suite: SuiteSpec, extra_overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """One entry per (arm, cell) with its full override list, baseline and complexity order."""
    cells = suite.matrix or [CellSpec.model_construct(name="", overrides=[])]
    out: list[dict[str, Any]] = []
    for cell in cells:
        for order, arm in enumerate(suite.runs):
            full = f"{arm.name}@{cell.name}" if cell.name else arm.name
            base = f"{suite.baseline}@{cell.name}" if cell.name else suite.baseline
            out.append(
                {
                    "name": full,
                    "arm": arm.name,
                    "cell": cell.name or None,
                    "order": order,
                    "baseline": base,
                    "is_baseline": full == base,
                    "key_change": arm.key_change,
                    "overrides": [
                        *suite.base_overrides,
                        *cell.overrides,
                        *arm.overrides,
                        *arm.cell_overrides.get(cell.name, []),
                        *(extra_overrides or []),
                    ],
                }
            )
    return out


def slug(text: str) -> str:
    return _SAFE.sub("-", text).strip("-") or "run"


def experiments_config(cfg: Any) -> ExperimentsConfig:
    """The ``experiments`` config section, or defaults while it is not mounted in ClinriskConfig."""
    ec = getattr(cfg, "experiments", None)
    return ec if isinstance(ec, ExperimentsConfig) else ExperimentsConfig()


# ------------------------------------------------------------------------------------------- running


def baseline_pairs(rows: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(run, its baseline) for every finished non-baseline run of a suite result whose baseline finished
    too; a finished run whose baseline did not gets ``delta = {"error": ...}`` instead of a comparison."""
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        if r.get("status") != "ok" or r["is_baseline"]:
            continue
        b = by_name.get(r["baseline"])
        if b is None or b.get("status") != "ok":
            r["delta"] = {"error": f"baseline {r['baseline']} unavailable"}
            continue
        yield r, b
