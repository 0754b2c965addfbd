"""Where a run's stages read and write under ``<output_dir>/<name>`` (CLI side only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clinrisk.config import ClinriskConfig


@dataclass(frozen=True)
class RunPaths:
    """The folders of one run; library functions take these as explicit arguments."""

    root: Path

    @classmethod
    def for_config(cls, cfg: ClinriskConfig) -> RunPaths:
        return cls(Path(cfg.run.output_dir) / cfg.run.name)

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def validated(self) -> Path:
        return self.root / "validated"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def validation(self) -> Path:
        return self.root / "validation"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def selection(self) -> Path:
        return self.root / "selection"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"
