"""Path-level entry points of every pipeline step: what the KFP components (and the CLI) call.

Each function takes directories (KFP artifact paths), loads the run's config artifact, and calls the stage
function of the library. Per-shard steps let ``dsl.ParallelFor`` fan out one pod per shard; the merge steps
collect shards back into one dataset directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from clinrisk.config import ClinriskConfig, load_config, save_config
from clinrisk.errors import ConfigError, DataError
from clinrisk.io import SHARD_DIR_RE, atomic_output_dir, read_json, write_json

CONFIG_FILE = "config.yaml"
MetricLogger = Callable[[str, float], None]


def _load(config_dir: str | Path) -> ClinriskConfig:
    return load_config(Path(config_dir) / CONFIG_FILE)


def _log_numeric(log: MetricLogger | None, metrics: dict[str, Any], prefix: str = "") -> None:
    """Send the numeric leaves of a (nested) metrics dict to a KFP Metrics logger."""
    if log is None:
        return
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _log_numeric(log, value, f"{name}.")
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float) and value == value:  # skip NaN
            log(name, float(value))


def resolve_config_step(config_yaml: str, overrides: list[str], out_dir: str | Path) -> list[int]:
    """Validate config text + overrides, write the effective config artifact, return the shard indices."""
    try:
        data = yaml.safe_load(config_yaml) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline parameter config_yaml: not valid YAML ({exc})") from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = out / "submitted.yaml"
    src.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load_config(src, overrides)
    src.unlink()
    save_config(cfg, out / CONFIG_FILE)
    return list(range(cfg.generate.n_shards))


def copy_shards(part_dirs: list[str | Path], subdir: str, dest: Path) -> int:
    """Copy every ``shard=NNN`` directory found under ``<part>/<subdir>`` into ``dest``; returns the count.

    Two parts holding the same shard is an error (a shard must be produced exactly once).
    """
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for part in part_dirs:
        src_root = Path(part) / subdir if subdir else Path(part)
        if not src_root.is_dir():
            raise DataError(f"{src_root}: expected shard directory not found")
        for child in sorted(src_root.iterdir()):
            if not SHARD_DIR_RE.match(child.name):
                continue
            target = dest / child.name
            if target.exists():
                raise DataError(f"{child.name}: produced by more than one task ({part})")
            shutil.copytree(child, target)
            n += 1
    return n


__all__ = [
    "CONFIG_FILE",
    "atomic_output_dir",
    "copy_shards",
    "read_json",
    "resolve_config_step",
    "write_json",
]
