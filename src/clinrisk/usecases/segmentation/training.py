"""Training, evaluation and inference of the UNet: pure cores (arrays in, results out, no files).

Determinism: parameters are initialised from ``run.seed``; batch order and augmentations come from
``numpy.random.default_rng([seed, epoch])``; XLA on CPU runs the same program the same way, so the same config
gives the same metrics (tested). The best checkpoint is the epoch with the highest mean validation Dice
(the earliest epoch on a tie).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clinrisk.usecases.segmentation.config import AugmentParams, SegmentationParams
from clinrisk.usecases.segmentation.model import (
    Params,
    confidence,
    dice_iou,
    init_params,
    make_forward,
    make_loss,
    param_count,
    to_numpy,
)


@dataclass
class TrainResult:
    params: dict[str, np.ndarray]  # best epoch's arrays
    best_epoch: int
    history: list[dict[str, float]]  # one row per epoch: loss, lr, train/val dice + iou, seconds
    n_params: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def augment(
    images: np.ndarray, masks: np.ndarray, a: AugmentParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flips, 90-degree rotations (geometry applied to image and mask alike), gain/offset and noise."""
    images, masks = images.copy(), masks.copy()
    for i in range(images.shape[0]):
        if a.flip and rng.random() < 0.5:
            images[i], masks[i] = images[i][:, ::-1], masks[i][:, ::-1]
        if a.rot90:
            k = int(rng.integers(4))
            images[i], masks[i] = np.rot90(images[i], k), np.rot90(masks[i], k)
        if a.intensity:
            gain = 1.0 + rng.uniform(-a.intensity, a.intensity)
            images[i] = images[i] * gain + rng.uniform(-a.intensity, a.intensity) / 2
        if a.noise:
            images[i] = images[i] + rng.normal(0.0, a.noise, images[i].shape)
    return np.clip(images, 0.0, 1.0).astype(np.float32), masks


def lr_schedule(p: SegmentationParams, steps_per_epoch: int) -> Callable[[int], float] | float:
    import optax

    t = p.train
    if t.schedule == "constant":
        return t.lr
    total = t.epochs * steps_per_epoch
    warmup = min(t.warmup_epochs * steps_per_epoch, max(total - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        0.0 if warmup else t.lr, t.lr, warmup, max(total, warmup + 1), end_value=t.lr * 0.02
    )


def predict_proba(
    forward: Callable[..., Any], params: Params | dict[str, Any], images: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """Sigmoid probabilities in fixed-size batches (the last one zero-padded), so XLA compiles one shape."""
    import jax

    out = []
    for s in range(0, images.shape[0], batch_size):
        batch = images[s : s + batch_size]
        n = batch.shape[0]
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        out.append(np.asarray(jax.nn.sigmoid(forward(params, batch)))[:n])
    return np.concatenate(out) if out else np.zeros_like(images)


def score(prob: np.ndarray, masks: np.ndarray, threshold: float) -> dict[str, Any]:
    dice, iou = dice_iou(prob > threshold, masks)
    return {
        "dice": float(dice.mean()),
        "iou": float(iou.mean()),
        "dice_per_image": dice,
        "iou_per_image": iou,
        "confidence": confidence(prob, threshold),
    }


COMPILE_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def use_compile_cache(folder: Path) -> bool:
    """Keep XLA's compiled programs in ``folder`` (unless ``JAX_COMPILATION_CACHE_DIR`` names another one);
    returns whether it did. The pipeline's train, evaluate and register steps are separate processes that
    compile the same forward pass, and a later run of the same model reuses them too. A cached executable is
    the same program, so results are unchanged. Call before the first compilation of the process."""
    import jax

    if os.environ.get(COMPILE_CACHE_ENV):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return True


@functools.lru_cache(maxsize=8)
def compiled_forward(arch: str, depth: int) -> Callable[..., Any]:
    """The jitted forward pass, one per architecture per process (XLA compiles it once per input shape)."""
    import jax

    return jax.jit(make_forward(arch, depth))


def compiled_step(p: SegmentationParams, steps_per_epoch: int) -> tuple[Any, Callable[..., Any]]:
    """(optimizer, jitted train step) for the config's model, loss and LR schedule (cached per process).

    A constant LR makes the same program whatever the epoch and step counts, so those are left out of the
    cache key then: runs that differ only in epochs or data size reuse one compiled step."""
    m, t = p.model, p.train
    constant = t.schedule == "constant"
    return _compiled_step(
        m.arch,
        m.depth,
        t.loss,
        t.bce_weight,
        t.tversky_alpha,
        t.schedule,
        t.lr,
        0 if constant else t.warmup_epochs,
        1 if constant else t.epochs,
        1 if constant else steps_per_epoch,
    )


@functools.lru_cache(maxsize=8)
def _compiled_step(
    arch: str,
    depth: int,
    loss: str,
    bce_weight: float,
    alpha: float,
    schedule: str,
    lr: float,
    warmup_epochs: int,
    epochs: int,
    steps_per_epoch: int,
) -> tuple[Any, Callable[..., Any]]:
    import jax
    import optax

    p = SegmentationParams.model_validate(
        {"train": {"schedule": schedule, "lr": lr, "warmup_epochs": warmup_epochs, "epochs": epochs}}
    )
    opt = optax.adam(lr_schedule(p, steps_per_epoch))
    forward = make_forward(arch, depth)
    loss_fn = make_loss(loss, bce_weight, alpha)

    @jax.jit
    def step(params: Params, state: Any, x: jax.Array, y: jax.Array) -> tuple[Params, Any, jax.Array]:
        value, grads = jax.value_and_grad(lambda q: loss_fn(forward(q, x), y))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    return opt, step


def train(
    p: SegmentationParams,
    seed: int,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    t0 = time.perf_counter()
    m, t = p.model, p.train
    params = init_params(seed, m.arch, m.base_channels, m.depth)
    steps_per_epoch = int(np.ceil(train_x.shape[0] / t.batch_size))
    opt, step = compiled_step(p, steps_per_epoch)
    forward = compiled_forward(m.arch, m.depth)
    schedule = lr_schedule(p, steps_per_epoch)
    state = opt.init(params)

    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, np.ndarray]] = (-1.0, -1, to_numpy(params))
    n = train_x.shape[0]
    for epoch in range(1, t.epochs + 1):
        e0 = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)
        losses = []
        for s in range(0, n, t.batch_size):
            idx = order[s : s + t.batch_size]
            x, y = train_x[idx], train_y[idx]
            if p.augment.enabled:
                x, y = augment(x, y, p.augment, rng)
            params, state, loss = step(params, state, x, y.astype(np.float32))
            losses.append(float(loss))
        tr = score(predict_proba(forward, params, train_x), train_y, t.threshold)
        va = score(predict_proba(forward, params, val_x), val_y, t.threshold)
        lr = float(schedule(epoch * steps_per_epoch - 1)) if callable(schedule) else float(schedule)
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "lr": lr,
            "train_dice": tr["dice"],
            "train_iou": tr["iou"],
            "val_dice": va["dice"],
            "val_iou": va["iou"],
            "seconds": time.perf_counter() - e0,
        }
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if va["dice"] > best[0]:
            best = (va["dice"], epoch, to_numpy(params))
    return TrainResult(best[2], best[1], history, param_count(params), time.perf_counter() - t0)
