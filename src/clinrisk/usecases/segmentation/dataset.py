"""The image set a run trains on: validated manifest + decoded arrays, and the patient-grouped split.

Synthetic data goes through the plugin's own generator and validation, shard by shard (the same code the
platform's ``generate``/``validate`` stages run); a real folder goes through ``ingest`` then validation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from clinrisk.errors import DataError
from clinrisk.usecases.base import RawShard
from clinrisk.usecases.segmentation.config import SegmentationParams
from clinrisk.usecases.segmentation.imaging import binary_mask, decode_gray, resize, to_unit
from clinrisk.usecases.segmentation.plugin import TABLE, SegmentationSchema, SegmentationSource

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig


@dataclass(frozen=True)
class ImageSet:
    manifest: pl.DataFrame  # validated rows (without the bytes), in a fixed order
    images: np.ndarray  # float32 (N, S, S) in [0, 1]
    masks: np.ndarray  # uint8 (N, S, S) in {0, 1}
    quarantine: pl.DataFrame  # rejected rows with _row, _check, _column, _reason (without bytes)
    data_hash: str

    def subset(self, rows: np.ndarray) -> ImageSet:
        return ImageSet(
            self.manifest[rows.tolist()], self.images[rows], self.masks[rows], self.quarantine, self.data_hash
        )


def load_image_set(cfg: ClinriskConfig, p: SegmentationParams) -> ImageSet:
    source, schema = SegmentationSource(), SegmentationSchema()
    validated, quarantined = [], []
    if p.data.source is None:
        plan = source.plan(cfg)
        for s in range(plan["n_shards"]):
            res = schema.validate(cfg, source.generate_shard(cfg, plan, s), s)
            validated.append(res.tables[TABLE])
            quarantined.append(res.quarantine[TABLE])
    else:
        raw = {k: v.collect() for k, v in source.ingest(cfg, p.data.source).items()}
        res = schema.validate(cfg, RawShard(raw), 0)
        validated.append(res.tables[TABLE])
        quarantined.append(res.quarantine[TABLE])
    return image_set(pl.concat(validated), pl.concat(quarantined), p)


def load_validated_image_set(validated_root: Path, p: SegmentationParams) -> ImageSet:
    """The image set of a validated dataset folder (the pipeline's merge-data output: ``shard=NNN`` files of
    the manifest with its image bytes, and ``quarantine/shard=NNN``)."""
    from clinrisk.io import list_shards

    root = Path(validated_root)
    table = pl.concat([pl.read_parquet(f) for f in list_shards(root)])
    q_root = root / "quarantine"
    quarantine = pl.concat([pl.read_parquet(f) for f in list_shards(q_root)]) if q_root.is_dir() else None
    return image_set(table, quarantine, p)


def image_set(table: pl.DataFrame, quarantine: pl.DataFrame | None, p: SegmentationParams) -> ImageSet:
    """Decode validated rows (any order) into the model's arrays, sorted by image id; the data hash covers
    every image id and its image and mask bytes."""
    table = table.sort("image_id")
    quarantine = quarantine.drop("image", "mask", strict=False) if quarantine is not None else pl.DataFrame()
    if table.height == 0:
        raise DataError(f"segmentation data: no valid image ({quarantine.height} quarantined)")
    side = p.data.train_size
    images = np.empty((table.height, side, side), np.float32)
    masks = np.empty((table.height, side, side), np.uint8)
    h = hashlib.sha256()
    for i, (image_id, img_bytes, mask_bytes) in enumerate(
        table.select("image_id", "image", "mask").iter_rows()
    ):
        images[i] = resize(to_unit(decode_gray(img_bytes)), side, nearest=False)
        masks[i] = resize(binary_mask(decode_gray(mask_bytes)).astype(np.float32), side, nearest=True) > 0.5
        h.update(image_id.encode())
        h.update(img_bytes)
        h.update(mask_bytes)
    return ImageSet(table.drop("image", "mask"), np.clip(images, 0, 1), masks, quarantine, h.hexdigest())


def patient_split(patients: list[int], val_fraction: float, seed: int) -> set[int]:
    """Validation patients: the first ``ceil(val_fraction * n)`` patients in a seeded hash order (at least
    one, and at least one left for training). Grouping by patient keeps every slice of a patient on one
    side: slices of one patient share anatomy, site and texture, so a per-image split would leak them."""
    unique = sorted(set(patients))
    if len(unique) < 2:
        raise DataError(f"segmentation data: {len(unique)} patient(s); a patient-grouped split needs >= 2")
    order = sorted(unique, key=lambda pid: hashlib.blake2b(f"{seed}:{pid}".encode(), digest_size=8).digest())
    n_val = min(len(unique) - 1, max(1, int(np.ceil(val_fraction * len(unique)))))
    return set(order[:n_val])


def split_rows(data: ImageSet, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    pids = data.manifest["patient_id"].to_list()
    val = patient_split(pids, val_fraction, seed)
    is_val = np.array([pid in val for pid in pids])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
