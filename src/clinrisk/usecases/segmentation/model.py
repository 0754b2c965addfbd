"""A small UNet in plain JAX (parameters are a dict of arrays; no framework state), its losses and metrics.

``arch="unet"``: two 3x3 conv + ReLU per level, max-pool down, nearest up-sampling + skip concatenation up.
``arch="resunet"``: the same with a 1x1-projected residual connection around each block. The input is one
image per sample, standardised per image (mean 0, sd 1: the model sees no site-specific gain/offset).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, dict[str, jax.Array]]
EPS = 1.0


def _conv_init(key: jax.Array, k: int, cin: int, cout: int) -> dict[str, jax.Array]:
    std = np.sqrt(2.0 / (k * k * cin))
    return {
        "w": jax.random.normal(key, (k, k, cin, cout), jnp.float32) * std,
        "b": jnp.zeros((cout,), jnp.float32),
    }


def block_names(depth: int) -> list[str]:
    return [f"enc{i}" for i in range(depth)] + ["mid"] + [f"dec{i}" for i in range(depth)]


def init_params(seed: int, arch: str, base: int, depth: int) -> Params:
    """He-normal weights from ``seed`` (same seed -> same bytes)."""
    key = jax.random.PRNGKey(seed)
    params: Params = {}
    chans = [base * 2**i for i in range(depth + 1)]
    specs: list[tuple[str, int, int]] = []
    cin = 1
    for i in range(depth):
        specs.append((f"enc{i}", cin, chans[i]))
        cin = chans[i]
    specs.append(("mid", cin, chans[depth]))
    cin = chans[depth]
    for i in reversed(range(depth)):
        specs.append((f"dec{i}", cin + chans[i], chans[i]))
        cin = chans[i]
    for name, ci, co in specs:
        key, k1, k2, k3 = jax.random.split(key, 4)
        params[f"{name}.a"] = _conv_init(k1, 3, ci, co)
        params[f"{name}.b"] = _conv_init(k2, 3, co, co)
        if arch == "resunet":
            params[f"{name}.skip"] = _conv_init(k3, 1, ci, co)
    key, k = jax.random.split(key)
    params["head"] = _conv_init(k, 1, chans[0], 1)
    return params


def _conv(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    y = jax.lax.conv_general_dilated(x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["b"]


def _block(params: Params, name: str, x: jax.Array, residual: bool) -> jax.Array:
    y = jax.nn.relu(_conv(x, params[f"{name}.a"]))
    y = _conv(y, params[f"{name}.b"])
    if residual:
        y = y + _conv(x, params[f"{name}.skip"])
    return jax.nn.relu(y)


def standardise(images: jax.Array) -> jax.Array:
    mean = images.mean(axis=(1, 2), keepdims=True)
    sd = images.std(axis=(1, 2), keepdims=True)
    return (images - mean) / (sd + 1e-3)


def make_forward(arch: str, depth: int) -> Callable[[Params, jax.Array], jax.Array]:
    """``forward(params, images (N, H, W) in [0, 1]) -> logits (N, H, W)``."""
    residual = arch == "resunet"

    def forward(params: Params, images: jax.Array) -> jax.Array:
        x = standardise(images)[..., None]
        skips = []
        for i in range(depth):
            x = _block(params, f"enc{i}", x, residual)
            skips.append(x)
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        x = _block(params, "mid", x, residual)
        for i in reversed(range(depth)):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = _block(params, f"dec{i}", jnp.concatenate([x, skips[i]], axis=-1), residual)
        return _conv(x, params["head"])[..., 0]

    return forward


# ------------------------------------------------------------------------------------------------ losses


def bce(logits: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean(jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def soft_dice_loss(prob: jax.Array, target: jax.Array) -> jax.Array:
    inter = (prob * target).sum(axis=(1, 2))
    denom = prob.sum(axis=(1, 2)) + target.sum(axis=(1, 2))
    return 1.0 - jnp.mean((2.0 * inter + EPS) / (denom + EPS))


def tversky_loss(prob: jax.Array, target: jax.Array, alpha: float) -> jax.Array:
    tp = (prob * target).sum(axis=(1, 2))
    fp = (prob * (1 - target)).sum(axis=(1, 2))
    fn = ((1 - prob) * target).sum(axis=(1, 2))
    return 1.0 - jnp.mean((tp + EPS) / (tp + alpha * fp + (1 - alpha) * fn + EPS))


def make_loss(kind: str, bce_weight: float, alpha: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
    def loss(logits: jax.Array, target: jax.Array) -> jax.Array:
        prob = jax.nn.sigmoid(logits)
        overlap = tversky_loss(prob, target, alpha) if kind == "tversky_bce" else soft_dice_loss(prob, target)
        return overlap + bce_weight * bce(logits, target)

    return loss


# ----------------------------------------------------------------------------------------------- metrics


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image hard Dice and IoU of boolean masks (N, H, W); an empty prediction of an empty truth is 1."""
    p, t = pred.astype(bool), truth.astype(bool)
    inter = (p & t).sum(axis=(1, 2)).astype(np.float64)
    ps, ts = p.sum(axis=(1, 2)).astype(np.float64), t.sum(axis=(1, 2)).astype(np.float64)
    union = ps + ts - inter
    both_empty = (ps + ts) == 0
    dice = np.where(both_empty, 1.0, 2 * inter / np.maximum(ps + ts, 1))
    iou = np.where(both_empty, 1.0, inter / np.maximum(union, 1))
    return dice, iou


def confidence(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Per-image confidence in [0, 1]: the mean certainty max(p, 1-p) over the pixels that matter — the
    predicted mask dilated by its boundary band (pixels with p > 0.1); an image with no such pixel is as
    certain as its most lesion-like pixel allows (1 - max p)."""
    out = np.empty(prob.shape[0], dtype=np.float64)
    for i, p in enumerate(prob):
        region = p > min(0.1, threshold)
        out[i] = float(np.maximum(p, 1 - p)[region].mean()) if region.any() else float(1.0 - p.max())
    return out


def param_count(params: Params) -> int:
    return int(sum(int(np.prod(v.shape)) for layer in params.values() for v in layer.values()))


def to_numpy(params: Params) -> dict[str, np.ndarray]:
    return {f"{layer}/{k}": np.asarray(v) for layer, d in params.items() for k, v in d.items()}


def from_numpy(arrays: dict[str, Any]) -> Params:
    params: Params = {}
    for key, value in arrays.items():
        layer, k = key.rsplit("/", 1)
        params.setdefault(layer, {})[k] = jnp.asarray(value)
    return params
