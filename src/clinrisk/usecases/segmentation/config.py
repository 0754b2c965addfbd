"""The segmentation use case's own knobs: the config's ``params:`` section (validated at load)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateParams(_Section):
    """The synthetic generator: patients, several images each, acquired at one of ``n_sites`` sites."""

    n_patients: int = Field(40, ge=2, le=100_000)
    images_per_patient: int = Field(4, ge=1, le=64)
    patients_per_shard: int = Field(50, ge=1, le=10_000)
    size: int = Field(64, ge=32, le=1024, description="image side in pixels (square)")
    n_sites: int = Field(3, ge=1, le=16)
    max_lesions: int = Field(3, ge=1, le=8)
    p_no_lesion: float = Field(0.1, ge=0.0, le=1.0, description="share of images with an empty truth mask")
    noise: float = Field(0.06, ge=0.0, le=1.0, description="gaussian noise sd (intensity units 0..1)")


class DataParams(_Section):
    """Where images come from: the generator (``source: null``) or a real image/mask folder pair."""

    source: Path | None = Field(None, description="folder with images/ and masks/ paired by file name")
    images_dir: str = "images"
    masks_dir: str = "masks"
    # image_id -> patient: the file stem up to the first ``patient_separator`` (e.g. p012_slice3 -> p012);
    # with no separator in the stem every image is its own patient.
    patient_separator: str = "_"
    require_nonempty_mask: bool = Field(False, description="quarantine images whose mask is empty")
    max_side: int = Field(1024, ge=16, le=8192)
    train_size: int = Field(64, ge=16, le=1024, description="images are resized to this side for the model")


class ModelParams(_Section):
    arch: Literal["unet", "resunet"] = "unet"
    base_channels: int = Field(8, ge=2, le=128)
    depth: int = Field(3, ge=1, le=5, description="number of 2x down-samplings")


class AugmentParams(_Section):
    enabled: bool = False
    flip: bool = True
    rot90: bool = True
    intensity: float = Field(0.1, ge=0.0, le=1.0, description="random gain/offset amplitude")
    noise: float = Field(0.02, ge=0.0, le=1.0)


class TrainParams(_Section):
    epochs: int = Field(12, ge=1, le=1000)
    batch_size: int = Field(8, ge=1, le=1024)
    lr: float = Field(3e-3, gt=0.0, le=1.0)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = Field(0, ge=0, le=100)
    loss: Literal["dice_bce", "tversky_bce"] = "dice_bce"
    bce_weight: float = Field(1.0, ge=0.0, le=10.0)
    tversky_alpha: float = Field(0.3, ge=0.0, le=1.0, description="false-positive weight (beta = 1 - alpha)")
    val_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="share of PATIENTS in validation")
    threshold: float = Field(0.5, gt=0.0, lt=1.0)


class ServeParams(_Section):
    max_side: int = Field(1024, ge=16, le=8192, description="larger images are refused (413)")
    max_image_bytes: int = Field(4_000_000, ge=1024)
    mask_format: Literal["png", "rle"] = "png"


class PromoteParams(_Section):
    metric: Literal["val_dice"] = "val_dice"
    min_improvement: float = Field(0.01, ge=0.0, le=1.0, description="absolute Dice a challenger must add")


class SegmentationParams(_Section):
    generate: GenerateParams = GenerateParams()
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    augment: AugmentParams = AugmentParams()
    train: TrainParams = TrainParams()
    serve: ServeParams = ServeParams()
    promote: PromoteParams = PromoteParams()

    @model_validator(mode="after")
    def _sizes(self) -> SegmentationParams:
        side = self.data.train_size
        if side % (2**self.model.depth):
            raise ValueError(
                f"data.train_size {side} must be divisible by 2**model.depth = {2**self.model.depth}"
            )
        return self
