"""The I/O layer of the segmentation use case: ``train_run``, ``eval_run``, ``infer_run`` read the config,
write the run directory, log to MLflow and (for training) register and maybe promote the model.

Run directory ``<run.output_dir>/<run.name>/segmentation/``::

    manifest.parquet, quarantine.parquet   the validated image manifest and the rejected files (reasons)
    split.json                             validation patients (no patient is on both sides)
    best.npz                               best checkpoint by validation Dice (checkpoint.py)
    history.json, metrics.json             per-epoch Dice/IoU (train + validation), final metrics
    per_image.parquet                      validation Dice/IoU/confidence per image (the bootstrap's input)
    learning_curves.png, overlays.png      logged to MLflow too
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from clinrisk.errors import DataError
from clinrisk.usecases.segmentation.checkpoint import load_checkpoint, save_checkpoint
from clinrisk.usecases.segmentation.config import SegmentationParams
from clinrisk.usecases.segmentation.dataset import ImageSet, load_image_set, split_rows
from clinrisk.usecases.segmentation.loading import CHECKPOINT, load_model

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig


def run_dir(cfg: ClinriskConfig) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name / "segmentation"


def params(cfg: ClinriskConfig) -> SegmentationParams:
    return SegmentationParams.model_validate(cfg.params)


def _json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def per_image_frame(data: ImageSet, scores: dict[str, Any]) -> pl.DataFrame:
    m = data.manifest
    return pl.DataFrame(
        {
            "image_id": m["image_id"],
            "patient_id": m["patient_id"],
            "site": m["site"],
            "dice": scores["dice_per_image"],
            "iou": scores["iou_per_image"],
            "confidence": scores["confidence"],
            "truth_pixels": data.masks.reshape(data.masks.shape[0], -1).sum(axis=1).astype(np.int64),
        }
    )


def train_run(cfg: ClinriskConfig, track: bool = True, promote: bool = True) -> dict[str, Any]:
    """Load + validate the images, split by patient, train, write the run directory, track, register."""
    p = params(cfg)
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    data = load_image_set(cfg, p)
    fitted = fit_checkpoint(cfg, p, data, out)
    scored, va = score_checkpoint(cfg, p, data, out / CHECKPOINT, out)
    metrics = {**scored, **fitted}
    _json(out / "metrics.json", metrics)
    if track and cfg.tracking.enabled:
        from clinrisk.usecases.segmentation.tracking import track_training

        history = json.loads((out / "history.json").read_text())
        metrics.update(track_training(cfg, p, out, history, metrics, va, promote=promote))
        _json(out / "metrics.json", metrics)
    return metrics


def fit_checkpoint(cfg: ClinriskConfig, p: SegmentationParams, data: ImageSet, out: Path) -> dict[str, Any]:
    """Split by patient, train, and write into ``out``: manifest + quarantine, split.json, the best
    checkpoint, history.json and the learning curves; returns the training metrics."""
    from clinrisk.usecases.segmentation import figures
    from clinrisk.usecases.segmentation.training import train

    data.manifest.write_parquet(out / "manifest.parquet")
    data.quarantine.write_parquet(out / "quarantine.parquet")
    tr_rows, va_rows = split_rows(data, p.train.val_fraction, cfg.run.seed)
    tr, va = data.subset(tr_rows), data.subset(va_rows)
    val_patients = sorted(set(va.manifest["patient_id"].to_list()))
    _json(
        out / "split.json",
        {
            "strategy": "patient-grouped, seeded hash order",
            "validation_patients": val_patients,
            "train_images": int(tr_rows.size),
            "validation_images": int(va_rows.size),
        },
    )
    result = train(p, cfg.run.seed, tr.images, tr.masks, va.images, va.masks)
    best = result.history[result.best_epoch - 1]
    header = {
        "arch": p.model.arch,
        "base_channels": p.model.base_channels,
        "depth": p.model.depth,
        "train_size": p.data.train_size,
        "threshold": p.train.threshold,
        "best_epoch": result.best_epoch,
        "val_dice": best["val_dice"],
        "data_hash": data.data_hash,
        "run_name": cfg.run.name,
    }
    save_checkpoint(out / CHECKPOINT, result.params, header)
    _json(out / "history.json", result.history)
    figures.learning_curves(result.history, out / "learning_curves.png", cfg.run.name)
    return {
        "train_dice": best["train_dice"],
        "train_iou": best["train_iou"],
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "n_params": result.n_params,
        "train_seconds": result.seconds,
        "images": data.manifest.height,
        "quarantined": data.quarantine.height,
        "train_images": int(tr_rows.size),
        "val_images": int(va_rows.size),
        "data_hash": data.data_hash,
        "ckpt_sha256": load_checkpoint(out / CHECKPOINT)[1]["sha256"],
    }


def score_checkpoint(
    cfg: ClinriskConfig, p: SegmentationParams, data: ImageSet, ckpt: Path, out: Path
) -> tuple[dict[str, Any], ImageSet]:
    """Score the checkpoint on the validation patients (the same split as training) and write
    per_image.parquet and overlays.png into ``out``; returns (metrics, validation images)."""
    from clinrisk.usecases.segmentation import figures
    from clinrisk.usecases.segmentation.training import predict_proba, score

    forward, model_params, header = load_model(ckpt)
    if int(header["train_size"]) != p.data.train_size:
        raise DataError(
            f"{ckpt}: trained at {header['train_size']} px; the config's data.train_size is {p.data.train_size}"
        )
    _, va_rows = split_rows(data, p.train.val_fraction, cfg.run.seed)
    va = data.subset(va_rows)
    threshold = float(header["threshold"])
    prob = predict_proba(forward, model_params, va.images)
    va_scores = score(prob, va.masks, threshold)
    per_image_frame(va, va_scores).write_parquet(out / "per_image.parquet")
    figures.overlays(
        va.images, va.masks, prob, threshold, va.manifest["image_id"].to_list(), out / "overlays.png"
    )
    metrics = {
        "val_dice": va_scores["dice"],
        "val_iou": va_scores["iou"],
        "val_images": int(va_rows.size),
        "mean_confidence": float(np.mean(va_scores["confidence"])),
    }
    return metrics, va


def eval_run(cfg: ClinriskConfig, ckpt: Path) -> dict[str, Any]:
    """Score a checkpoint on the config's validation patients (same split as training)."""
    from clinrisk.usecases.segmentation.training import predict_proba, score

    p = params(cfg)
    forward, model_params, header = load_model(ckpt)
    if int(header["train_size"]) != p.data.train_size:
        raise DataError(
            f"{ckpt}: trained at {header['train_size']} px; the config's data.train_size is {p.data.train_size}"
        )
    data = load_image_set(cfg, p)
    _, va_rows = split_rows(data, p.train.val_fraction, cfg.run.seed)
    va = data.subset(va_rows)
    s = score(predict_proba(forward, model_params, va.images), va.masks, float(header["threshold"]))
    return {
        "val_dice": s["dice"],
        "val_iou": s["iou"],
        "val_images": int(va_rows.size),
        "mean_confidence": float(np.mean(s["confidence"])),
        "checkpoint": str(ckpt),
    }


def predict_images(
    forward: Any, model_params: Any, header: dict[str, Any], images: list[np.ndarray]
) -> list[tuple[np.ndarray, float]]:
    """Masks (at each image's own size) and confidences for decoded 2D images."""
    from clinrisk.usecases.segmentation.imaging import resize, to_unit
    from clinrisk.usecases.segmentation.model import confidence
    from clinrisk.usecases.segmentation.training import predict_proba

    side, thr = int(header["train_size"]), float(header["threshold"])
    batch = np.stack([np.clip(resize(to_unit(im), side, nearest=False), 0, 1) for im in images]).astype(
        np.float32
    )
    prob = predict_proba(forward, model_params, batch)
    conf = confidence(prob, thr)
    out = []
    for im, pr, c in zip(images, prob, conf, strict=True):
        full = _resize_hw(pr, im.shape)
        out.append(((full > thr).astype(np.uint8), float(c)))
    return out


def _resize_hw(prob: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(prob.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR
    )
    return np.asarray(img, dtype=np.float32)


def infer_run(ckpt: Path, inputs: list[Path], out_dir: Path, max_side: int) -> list[dict[str, Any]]:
    """Masks for image files (PNG/JPEG/TIFF) written as ``<out_dir>/<stem>_mask.png``; one record per file."""
    from clinrisk.usecases.segmentation.imaging import ImageProblem, decode_gray, encode_png

    forward, model_params, header = load_model(ckpt)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for path in inputs:
        if not path.is_file():
            raise DataError(f"{path}: not found")
        try:
            img = decode_gray(path.read_bytes(), "image", max_side)
        except ImageProblem as exc:
            raise DataError(f"{path}: {exc.reason}") from None
        mask, conf = predict_images(forward, model_params, header, [img])[0]
        target = out_dir / f"{path.stem}_mask.png"
        target.write_bytes(encode_png(mask * 255))
        records.append(
            {
                "input": str(path),
                "mask": str(target),
                "confidence": conf,
                "mask_pixels": int(mask.sum()),
                "height": img.shape[0],
                "width": img.shape[1],
            }
        )
    _json(out_dir / "predictions.json", records)
    return records


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0))
