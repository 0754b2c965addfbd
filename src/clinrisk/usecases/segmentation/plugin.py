"""The segmentation use case as a plugin of ``clinrisk.usecases.base``.

One raw table, ``images``: one row per image with its patient, site, file name and the encoded image and
mask bytes (PNG for generated data; the original PNG/JPEG/TIFF bytes for ingested folders). The entity is
the patient, so a shard holds whole patients. Validation decodes every row and quarantines bad files with
reasons; the passing rows form the image manifest (``schemas.MANIFEST_SCHEMA``) plus normalised PNG bytes.

The model is not the shared LightGBM over a feature table: this use case trains and serves its own UNet
(``clinrisk segmentation train|eval|infer|serve``), so its ``features`` and ``serving`` parts refuse the
tabular steps with a one-line ConfigError (``UseCase.model_family == "own"``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from clinrisk.errors import ConfigError, DataError
from clinrisk.feature_table import FeatureSpec
from clinrisk.usecases.base import LabelDefinition, RawShard, ServingBatch, ValidatedShard
from clinrisk.usecases.segmentation.config import SegmentationParams
from clinrisk.usecases.segmentation.imaging import (
    IMAGE_SUFFIXES,
    ImageProblem,
    binary_mask,
    decode_gray,
    encode_png,
)
from clinrisk.usecases.segmentation.schemas import MANIFEST_SCHEMA, RAW_SCHEMA, quarantine_manifest_failures
from clinrisk.usecases.segmentation.synth import generate_image

if TYPE_CHECKING:
    import pandera.polars as pa

    from clinrisk.config import ClinriskConfig, ServingConfig

NAME = "segmentation"
TABLE = "images"
TABLES = (TABLE,)
RAW_COLUMNS = {
    "image_id": pl.String,
    "patient_id": pl.Int64,
    "patient": pl.String,
    "site": pl.String,
    "file": pl.String,
    "image": pl.Binary,
    "mask": pl.Binary,
}
TRUTH_COLUMNS = {
    "image_id": pl.String,
    "patient_id": pl.Int64,
    "n_lesions": pl.Int32,
    "lesion_pixels": pl.Int64,
    "lesion_contrast": pl.Float64,
}
LABELS = LabelDefinition(
    description="pixel-wise lesion mask of a 2D grayscale image (Dice primary, IoU secondary)",
    horizon="the image itself (no time horizon)",
    slices=("site",),
)


def params(cfg: ClinriskConfig) -> SegmentationParams:
    return SegmentationParams.model_validate(cfg.params)


def patient_key(patient: str) -> int:
    """Int64 entity id of a patient name: the number itself when the name is digits after an optional
    letter prefix (``p000012`` -> 12, ``17`` -> 17), else a stable 52-bit hash of the name."""
    stripped = patient.lstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    if stripped.isdigit() and len(stripped) < 15:
        return int(stripped)
    return int.from_bytes(hashlib.blake2b(patient.encode(), digest_size=8).digest(), "big") >> 12


def patient_of(stem: str, separator: str) -> str:
    return stem.split(separator, 1)[0] if separator and separator in stem else stem


# ---------------------------------------------------------------------------------------------- source


class SegmentationSource:
    """Synthetic patients in blocks of ``generate.patients_per_shard``; real image/mask folders."""

    tables: tuple[str, ...] = TABLES

    def plan(self, cfg: ClinriskConfig) -> dict[str, Any]:
        """Patient blocks of the generator; with ``data.source`` set, one shard that reads that folder (so
        the platform's generate → validate stages and the pipeline ingest a real dataset the same way)."""
        p = params(cfg)
        if p.data.source is not None:
            return {"n_shards": 1, "source": str(p.data.source), "seed": cfg.run.seed}
        g = p.generate
        n_shards = math.ceil(g.n_patients / g.patients_per_shard)
        blocks = [
            [s * g.patients_per_shard, min(g.patients_per_shard, g.n_patients - s * g.patients_per_shard)]
            for s in range(n_shards)
        ]
        return {"n_shards": n_shards, "blocks": blocks, "seed": cfg.run.seed}

    def generate_shard(self, cfg: ClinriskConfig, plan: Mapping[str, Any], shard: int) -> RawShard:
        if plan.get("source") is not None:
            # Real images have no generator truth; an empty truth table keeps the shard layout the same.
            table = self.ingest(cfg, Path(plan["source"]))[TABLE].collect()
            return RawShard({TABLE: table}, pl.DataFrame(schema=TRUTH_COLUMNS))
        g = params(cfg).generate
        first, n = plan["blocks"][shard]
        rows, truth = [], []
        for pid in range(first + 1, first + n + 1):
            for s in range(g.images_per_patient):
                im = generate_image(g, int(plan["seed"]), pid, s)
                rows.append(
                    {
                        "image_id": im.image_id,
                        "patient_id": pid,
                        "patient": f"p{pid:06d}",
                        "site": im.site,
                        "file": f"{im.image_id}.png",
                        "image": encode_png(im.image),
                        "mask": encode_png(im.mask * 255),
                    }
                )
                truth.append(
                    {
                        "image_id": im.image_id,
                        "patient_id": pid,
                        "n_lesions": im.n_lesions,
                        "lesion_pixels": int(im.mask.sum()),
                        "lesion_contrast": im.lesion_contrast,
                    }
                )
        table = pl.DataFrame(rows, schema=RAW_COLUMNS)
        truth_df = pl.DataFrame(truth, schema=TRUTH_COLUMNS)
        return RawShard({TABLE: table}, truth_df)

    def manifest(
        self, cfg: ClinriskConfig, plan: Mapping[str, Any], read_shard: Callable[[int], RawShard]
    ) -> dict[str, Any]:
        h = hashlib.sha256()
        rows_per_shard, with_lesion, n = [], 0, 0
        patients: set[int] = set()
        for s in range(plan["n_shards"]):
            raw = read_shard(s)
            table = raw.tables[TABLE]
            rows_per_shard.append(table.height)
            patients.update(table["patient_id"].drop_nulls().to_list())
            for image_id, image, mask in table.select("image_id", "image", "mask").iter_rows():
                h.update(image_id.encode())
                h.update(hashlib.sha256(image or b"").digest())
                h.update(hashlib.sha256(mask or b"").digest())
            if raw.truth is not None:
                with_lesion += int((raw.truth["n_lesions"] > 0).sum())
                n += raw.truth.height
        return {
            "n_shards": plan["n_shards"],
            "rows": sum(rows_per_shard),
            "rows_per_shard": rows_per_shard,
            "observed_hash": h.hexdigest(),
            "patients": len(patients),
            "lesion_prevalence": with_lesion / n if n else None,  # share of images with a lesion
        }

    def ingest(self, cfg: ClinriskConfig, source: Path) -> Mapping[str, pl.LazyFrame]:
        """A folder with ``images/`` and ``masks/`` paired by file stem (PNG/JPEG/TIFF), or this platform's
        own raw export (``images/*.parquet``). Unpaired files become rows that validation quarantines."""
        d = params(cfg).data
        source = Path(source)
        if not source.is_dir():
            raise DataError(f"{source}: missing (expected a folder with {d.images_dir}/ and {d.masks_dir}/)")
        images_dir, masks_dir = source / d.images_dir, source / d.masks_dir
        parquet = sorted(images_dir.glob("*.parquet")) if images_dir.is_dir() else []
        if parquet:
            return {TABLE: pl.scan_parquet(parquet).select(list(RAW_COLUMNS)).cast(RAW_COLUMNS)}  # type: ignore[arg-type]
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise DataError(f"{folder}: missing folder (images and masks are paired by file name)")
        return {TABLE: read_folder_pair(images_dir, masks_dir, d.patient_separator).lazy()}

    def entity_column(self, table: str) -> str:
        return "patient_id"


def _files_by_stem(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in out:
                raise DataError(f"{path}: two files with stem {path.stem!r} in {folder}")
            out[path.stem] = path
    return out


def read_folder_pair(images_dir: Path, masks_dir: Path, separator: str) -> pl.DataFrame:
    """Raw rows from an image folder and a mask folder paired by file stem (bytes read, not decoded)."""
    images, masks = _files_by_stem(images_dir), _files_by_stem(masks_dir)
    rows = []
    for stem in sorted(set(images) | set(masks)):
        patient = patient_of(stem, separator)
        img, msk = images.get(stem), masks.get(stem)
        rows.append(
            {
                "image_id": stem,
                "patient_id": patient_key(patient),
                "patient": patient,
                "site": "unknown",
                "file": (img or msk).name,  # type: ignore[union-attr]
                "image": img.read_bytes() if img else None,
                "mask": msk.read_bytes() if msk else None,
            }
        )
    return pl.DataFrame(rows, schema=RAW_COLUMNS)


# ---------------------------------------------------------------------------------------------- schema


def check_row(
    image: bytes | None, mask: bytes | None, require_nonempty: bool, max_side: int
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded (image, 0/1 mask) of one row, or ImageProblem naming the first problem found."""
    if image is None:
        raise ImageProblem("missing_image", "image: no image file for this mask")
    if mask is None:
        raise ImageProblem("missing_mask", "mask: no mask file for this image")
    img = decode_gray(image, "image", max_side)
    m = binary_mask(decode_gray(mask, "mask", max_side))
    if img.shape != m.shape:
        raise ImageProblem(
            "shape_mismatch", f"image {img.shape[1]}x{img.shape[0]} vs mask {m.shape[1]}x{m.shape[0]}"
        )
    if require_nonempty and not m.any():
        raise ImageProblem("empty_mask", "mask: no foreground pixel (data.require_nonempty_mask is true)")
    return img, m


class SegmentationSchema:
    """The raw table's columns, then per-row file checks; passing rows are the validated image manifest."""

    def schemas(self, cfg: ClinriskConfig) -> Mapping[str, pa.DataFrameSchema]:
        return {TABLE: RAW_SCHEMA}

    def validate(self, cfg: ClinriskConfig, raw: RawShard, shard: int) -> ValidatedShard:
        d = params(cfg).data
        table = raw.tables[TABLE]
        missing = [c for c in RAW_COLUMNS if c not in table.columns]
        if missing:
            raise DataError(f"{TABLE} shard {shard}: missing column(s) {', '.join(missing)}")
        good, bad = [], []
        for i, row in enumerate(table.iter_rows(named=True)):
            try:
                img, m = check_row(row["image"], row["mask"], d.require_nonempty_mask, d.max_side)
            except ImageProblem as exc:
                column = (
                    "mask"
                    if exc.check in ("missing_mask", "shape_mismatch") or exc.reason.startswith("mask")
                    else "image"
                )
                bad.append(
                    {
                        **row,
                        "_row": i,
                        "_check": exc.check,
                        "_column": column,
                        "_reason": f"{row['file']}: {exc.reason}",
                    }
                )
                continue
            good.append(
                {
                    "image_id": row["image_id"],
                    "patient_id": row["patient_id"],
                    "patient": row["patient"],
                    "site": row["site"],
                    "path": row["file"],
                    "height": img.shape[0],
                    "width": img.shape[1],
                    "dtype": str(img.dtype),
                    "mask_coverage": float(m.mean()),
                    "image": row["image"]
                    if row["file"].lower().endswith(".png") and img.dtype == np.uint8
                    else encode_png(img),
                    "mask": encode_png(m * 255),
                    "_row": i,
                }
            )
        manifest = pl.DataFrame(good, schema=MANIFEST_COLUMNS | {"_row": pl.Int64})
        manifest, failed = quarantine_manifest_failures(manifest)
        q_schema = RAW_COLUMNS | {
            "_row": pl.Int64,
            "_check": pl.String,
            "_column": pl.String,
            "_reason": pl.String,
        }
        quarantine = pl.DataFrame(bad, schema=q_schema)
        if failed.height:
            back = (
                table.with_row_index("_row")
                .with_columns(pl.col("_row").cast(pl.Int64))
                .join(failed.select("_row", "_check", "_column", "_reason"), on="_row")
            )
            quarantine = pl.concat([quarantine, back.select(list(q_schema))])
        checks: dict[str, int] = {}
        for c in quarantine["_check"].to_list():
            checks[c] = checks.get(c, 0) + 1
        return ValidatedShard(
            {TABLE: manifest.drop("_row")},
            {TABLE: quarantine.sort("_row")},
            {
                "rows_in": table.height,
                "images_valid": manifest.height,
                "images_quarantined": quarantine.height,
                "by_check": checks,
            },
        )


MANIFEST_COLUMNS: dict[str, Any] = {
    "image_id": pl.String,
    "patient_id": pl.Int64,
    "patient": pl.String,
    "site": pl.String,
    "path": pl.String,
    "height": pl.Int64,
    "width": pl.Int64,
    "dtype": pl.String,
    "mask_coverage": pl.Float64,
    "image": pl.Binary,
    "mask": pl.Binary,
}
assert set(MANIFEST_SCHEMA.columns) <= set(MANIFEST_COLUMNS)


# ------------------------------------------------------------------------ the tabular parts it does not have

_NO_TABLE = (
    "use case 'segmentation' has no feature table: it trains and serves its own UNet "
    "(clinrisk segmentation train|eval|infer|serve --config configs/segmentation/default.yaml)"
)


class NoFeatureTable:
    """Refuses the shared tabular steps (features, LightGBM, tabular serving) with one line."""

    def fit_spec(self, cfg: ClinriskConfig, train: Mapping[str, pl.LazyFrame]) -> FeatureSpec:
        raise ConfigError(_NO_TABLE)

    def build(
        self,
        cfg: ClinriskConfig,
        tables: Mapping[str, pl.LazyFrame],
        spec: FeatureSpec,
        truth: pl.LazyFrame | None,
    ) -> pl.LazyFrame:
        raise ConfigError(_NO_TABLE)


class NoTabularServing:
    def example_instance(self) -> Mapping[str, Any]:
        raise ConfigError(_NO_TABLE)

    def parse(self, body: Any, spec: FeatureSpec, cfg: ServingConfig) -> ServingBatch:
        raise ConfigError(_NO_TABLE)

    def features(self, batch: ServingBatch, spec: FeatureSpec) -> pl.DataFrame:
        raise ConfigError(_NO_TABLE)

    def instances(
        self, tables: Mapping[str, pl.DataFrame], keys: Sequence[tuple[int, int]]
    ) -> list[dict[str, Any]]:
        raise ConfigError(_NO_TABLE)
