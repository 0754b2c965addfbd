"""Which bundle directory ``clinrisk serve`` loads (no KServe import)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clinrisk.errors import ConfigError, DataError
from clinrisk.tracking import parse_model_uri

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig

KSERVE_MODEL_DIR = Path("/mnt/models")  # where KServe's storage initializer puts storageUri


def resolve_bundle_dir(
    cfg: ClinriskConfig, bundle: Path | None = None, model_uri: str | None = None, run_dir: Path | None = None
) -> Path:
    """The bundle to serve, first match wins: ``bundle``; ``model_uri`` (downloaded from the MLflow
    registry); ``/mnt/models`` when it exists (KServe); the run's ``bundle/``."""
    if bundle is not None and model_uri is not None:
        raise ConfigError("give either --bundle or --model-uri, not both")
    if bundle is not None:
        if not Path(bundle).is_dir():
            raise DataError(f"--bundle {bundle}: directory not found")
        return Path(bundle)
    if model_uri is not None:
        from clinrisk.tracking import resolve_model

        name, ref = parse_model_uri(model_uri)
        cfg = cfg.model_copy(deep=True)
        cfg.tracking.registered_model_name = name
        return resolve_model(cfg, ref, run_dir=run_dir)
    if KSERVE_MODEL_DIR.is_dir():
        return KSERVE_MODEL_DIR
    from clinrisk.paths import RunPaths

    default = run_dir / "bundle" if run_dir is not None else RunPaths.for_config(cfg).bundle
    if not default.is_dir():
        raise DataError(
            f"no bundle to serve: {default} not found (train first, or pass --bundle DIR / --model-uri URI)"
        )
    return default
