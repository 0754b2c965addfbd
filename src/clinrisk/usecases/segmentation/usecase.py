"""The registered ``segmentation`` use case (see the package docstring)."""

from __future__ import annotations

from clinrisk.usecases.base import UseCase, UseCaseNames
from clinrisk.usecases.segmentation.config import SegmentationParams
from clinrisk.usecases.segmentation.experiments import EXPERIMENT_HOOKS
from clinrisk.usecases.segmentation.plugin import (
    LABELS,
    NAME,
    NoFeatureTable,
    NoTabularServing,
    SegmentationSchema,
    SegmentationSource,
)
from clinrisk.usecases.segmentation.smoke import serving_smoke_test

USECASE = UseCase(
    names=UseCaseNames(
        usecase=NAME, namespace="segmentation", model_name="segmentation", experiment="segmentation"
    ),
    description="Pixel-wise lesion masks of 2D grayscale medical images (UNet, Dice + BCE).",
    source=SegmentationSource(),
    schema=SegmentationSchema(),
    features=NoFeatureTable(),
    labels=LABELS,
    serving=NoTabularServing(),
    configs={"default": "configs/segmentation/default.yaml", "tiny": "configs/segmentation/tiny.yaml"},
    config_model=SegmentationParams,
    model_family="own",
    serving_smoke_test=serving_smoke_test,
    experiments=EXPERIMENT_HOOKS,
)

__all__ = ["USECASE"]
