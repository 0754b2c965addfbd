"""Learning curves and prediction overlays (PNG files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def learning_curves(history: list[dict[str, float]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, style in (("train_dice", "-"), ("val_dice", "-"), ("train_iou", "--"), ("val_iou", "--")):
        ax1.plot(epochs, [h[key] for h in history], style, label=key)
    ax1.set_xlabel("epoch")
    ax1.set_ylim(0, 1)
    ax1.legend(fontsize=7)
    ax1.set_title("Dice / IoU")
    ax2.plot(epochs, [h["loss"] for h in history], label="train loss")
    ax2.set_xlabel("epoch")
    ax2.set_title("loss")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def overlays(
    images: np.ndarray,
    truth: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    names: list[str],
    path: Path,
    n: int = 6,
) -> Path:
    """Validation images with the truth (green) and prediction (red) outlines, Dice in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clinrisk.usecases.segmentation.model import dice_iou

    k = min(n, images.shape[0])
    fig, axes = plt.subplots(1, max(k, 1), figsize=(2.2 * max(k, 1), 2.4), squeeze=False)
    pred = prob > threshold
    dice, _ = dice_iou(pred[:k], truth[:k])
    for i in range(k):
        ax = axes[0, i]
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
        if truth[i].any():
            ax.contour(truth[i], levels=[0.5], colors="lime", linewidths=0.8)
        if pred[i].any():
            ax.contour(pred[i].astype(float), levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{names[i]}\nDice {dice[i]:.2f}", fontsize=6)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
