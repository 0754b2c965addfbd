"""Benchmark: segmentation inference cost per 256x256 image (CPU, JAX/XLA), median of 20 calls after warm-up.

Two figures: (a) the served path for the default config (decode-free: a 256x256 uint8 array -> resize to
the model's 64 px -> UNet -> mask back at 256x256 + confidence), batch of 1; (b) the same UNet run natively
at 256x256 (a model trained at full resolution), batch of 1 and per image in a batch of 8. Weights are the
seeded initial ones: the cost does not depend on their values.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _median_ms(fn, reps: int = 20) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(median wall ms, median CPU ms of this process, all threads) per call; CPU is less hurt by load."""
    fn()  # compile + warm
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    import jax

    from clinrisk.config import load_config
    from clinrisk.usecases.segmentation.config import SegmentationParams
    from clinrisk.usecases.segmentation.model import init_params, make_forward
    from clinrisk.usecases.segmentation.run import predict_images

    cfg = load_config(REPO / "configs/segmentation/default.yaml")
    m = SegmentationParams.model_validate(cfg.params).model
    train_size = SegmentationParams.model_validate(cfg.params).data.train_size
    params = init_params(0, m.arch, m.base_channels, m.depth)
    forward = jax.jit(make_forward(m.arch, m.depth))
    header = {"train_size": train_size, "threshold": 0.5}
    img = (np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)
    served = _median_ms(lambda: predict_images(forward, params, header, [img]))
    x1 = np.random.default_rng(1).random((1, 256, 256)).astype(np.float32)
    x8 = np.random.default_rng(2).random((8, 256, 256)).astype(np.float32)
    native1 = _median_ms(lambda: forward(params, x1).block_until_ready())
    native8 = tuple(v / 8 for v in _median_ms(lambda: forward(params, x8).block_until_ready()))
    print(f"cores available: {len(os.sched_getaffinity(0))}; load average: {os.getloadavg()[0]:.1f}")
    print(f"model: {m.arch}, base {m.base_channels}, depth {m.depth}, trained at {train_size} px")
    for label, (wall, cpu) in (
        (f"served path, 256x256 in -> mask at 256x256 (model at {train_size} px)", served),
        ("UNet natively at 256x256, batch 1", native1),
        ("UNet natively at 256x256, batch 8, per image", native8),
    ):
        print(f"{label}: {wall:.2f} ms wall, {cpu:.2f} ms CPU (medians of 20)")


if __name__ == "__main__":
    main()
