"""The training pipeline's parameters, as a user fills them in the Kubeflow UI, → the run's typed config.

A run names its config instead of pasting it: ``usecase`` + ``config_name`` pick
``configs/<usecase>/<config_name>.yaml`` (or the shared ``configs/<config_name>.yaml``, e.g. ``cluster``)
from the files installed with the package (the pipeline image has them under
``<prefix>/share/clinrisk/configs``); a few common overrides have their own fields, and any other key goes
in ``overrides``. ``config_yaml``, the whole config as YAML text, is the escape hatch: when given, it
replaces the named file (local runs pass the effective config this way).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clinrisk.config import ClinriskConfig, load_config
from clinrisk.errors import ConfigError

CONFIGS_ENV = "CLINRISK_CONFIGS_DIR"
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def config_dirs() -> list[Path]:
    """Where named configs are looked up, in order: $CLINRISK_CONFIGS_DIR, ./configs, the package's
    installed copy (``<prefix>/share/clinrisk/configs``), the source checkout's ``configs/``."""
    dirs = [Path(os.environ[CONFIGS_ENV])] if os.environ.get(CONFIGS_ENV) else []
    dirs += [Path("configs"), Path(sys.prefix) / "share" / "clinrisk" / "configs"]
    dirs.append(Path(__file__).resolve().parents[2] / "configs")  # src/clinrisk/ -> repository root
    return dirs


def named_config_file(usecase: str, name: str) -> Path:
    """``configs/<usecase>/<name>.yaml``, else the shared ``configs/<name>.yaml``; a ConfigError listing
    the names there are when neither exists."""
    for what, value in (("usecase", usecase), ("config_name", name)):
        if not _NAME.match(value):
            raise ConfigError(f"pipeline parameter {what}: {value!r} is not a name (a-z, 0-9, _ or -)")
    dirs = [d for d in config_dirs() if d.is_dir()]
    for d in dirs:
        for candidate in (d / usecase / f"{name}.yaml", d / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for d in dirs for p in [*d.glob(f"{usecase}/*.yaml"), *d.glob("*.yaml")]})
    where = ", ".join(str(d) for d in dirs) or "no configs folder found"
    raise ConfigError(
        f"pipeline parameter config_name: no config {name!r} for use case {usecase!r} in {where}"
        + (f"; known: {', '.join(known)}" if known else "")
    )


@dataclass(frozen=True)
class PipelineParams:
    """What the UI form holds. 0 / -1 / "" in a common override = keep the config file's value."""

    usecase: str = "clinical"
    config_name: str = "default"
    config_yaml: str = ""
    overrides: list[str] = field(default_factory=list)
    n_patients: int = 0
    seed: int = -1
    run_name: str = ""

    def common_overrides(self) -> list[str]:
        """The dedicated fields as dotted overrides (applied before ``overrides``, which win)."""
        out: list[str] = []
        if self.n_patients < 0:
            raise ConfigError(f"pipeline parameter n_patients: {self.n_patients} (0 = the config's)")
        if self.n_patients:
            out.append(f"generate.n_patients={int(self.n_patients)}")
        if self.seed < -1:
            raise ConfigError(f"pipeline parameter seed: {self.seed} (-1 = the config's)")
        if self.seed >= 0:
            out.append(f"run.seed={int(self.seed)}")
        if self.run_name:
            out.append(f"run.name={self.run_name}")
        return out


def from_form(
    usecase: str,
    config_name: str,
    config_yaml: str,
    overrides: list[str],
    n_patients: int,
    seed: int,
    run_name: str,
) -> PipelineParams:
    """The run form's fields as KFP hands them to a component (numbers may arrive as floats locally)."""
    return PipelineParams(
        usecase=usecase,
        config_name=config_name,
        config_yaml=config_yaml,
        overrides=list(overrides),
        n_patients=int(n_patients),
        seed=int(seed),
        run_name=run_name,
    )


def resolve(params: PipelineParams, scratch_dir: Path) -> ClinriskConfig:
    """The run's validated config from the form (``scratch_dir`` holds the pasted YAML while it loads)."""
    overrides = [*params.common_overrides(), *(str(o) for o in params.overrides)]
    if params.config_yaml.strip():
        try:
            data: Any = yaml.safe_load(params.config_yaml) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"pipeline parameter config_yaml: not valid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError("pipeline parameter config_yaml: top level must be a mapping of sections")
        scratch_dir.mkdir(parents=True, exist_ok=True)
        src = scratch_dir / "submitted.yaml"
        src.write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            return load_config(src, overrides)
        finally:
            src.unlink()
    path = named_config_file(params.usecase, params.config_name)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({exc})") from exc
    run = data.get("run") if isinstance(data, dict) else None
    # A shared file (configs/<name>.yaml) that names no use case takes the one the form chose.
    lead = [] if isinstance(run, dict) and "usecase" in run else [f"run.usecase={params.usecase}"]
    cfg = load_config(path, [*lead, *overrides])
    if cfg.run.usecase != params.usecase:
        raise ConfigError(
            f"pipeline parameter usecase: {path} configures use case {cfg.run.usecase!r}, not {params.usecase!r}"
        )
    return cfg
