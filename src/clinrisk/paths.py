"""Where a run's stages read and write under ``<output_dir>/<name>``: a named view of the stage catalog's
run layout (:data:`clinrisk.stages.catalog.RUN_LAYOUT`, the one owner of these paths)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clinrisk.config import ClinriskConfig
from clinrisk.stages.catalog import RUN_LAYOUT


@dataclass(frozen=True)
class RunPaths:
    """The folders of one run (attribute names for code that wants a folder, not a catalog)."""

    root: Path

    @classmethod
    def for_config(cls, cfg: ClinriskConfig) -> RunPaths:
        return cls(Path(cfg.run.output_dir) / cfg.run.name)

    def _at(self, name: str) -> Path:
        return self.root / RUN_LAYOUT[name]

    @property
    def raw(self) -> Path:
        return self._at("raw")

    @property
    def validated(self) -> Path:
        return self._at("validated")

    @property
    def quarantine(self) -> Path:
        return self._at("quarantine")

    @property
    def validation(self) -> Path:
        return self._at("validation")

    @property
    def features(self) -> Path:
        return self._at("features")

    @property
    def selection(self) -> Path:
        return self._at("selection")

    @property
    def bundle(self) -> Path:
        return self._at("model_bundle")

    @property
    def evaluation(self) -> Path:
        return self._at("evaluation")

    @property
    def mlflow(self) -> Path:
        return self._at("mlflow")
