"""Container image references shared by the KFP components, manifests and the image build.

Tags follow the package version (never ``latest``) so KFP cache keys and rollouts are immutable.
Override with CLINRISK_PIPELINE_IMAGE / CLINRISK_SERVING_IMAGE (e.g. a GKE registry path).
"""

from __future__ import annotations

import os

from clinrisk import __version__

IMAGE_REPOSITORY = "clinrisk"


def pipeline_image() -> str:
    """Image every KFP component runs in (library + kfp executor)."""
    return os.environ.get("CLINRISK_PIPELINE_IMAGE", f"{IMAGE_REPOSITORY}/pipeline:{__version__}")


def serving_image() -> str:
    """Image of the KServe predictor (ModelServer + clinrisk.serving)."""
    return os.environ.get("CLINRISK_SERVING_IMAGE", f"{IMAGE_REPOSITORY}/serving:{__version__}")
