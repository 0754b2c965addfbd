"""Loading a checkpoint into a runnable model (jitted forward + parameters), checked against its header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clinrisk.errors import DataError
from clinrisk.usecases.segmentation.checkpoint import load_checkpoint

CHECKPOINT = "best.npz"


def model_forward(header: dict[str, Any]) -> Any:
    from clinrisk.usecases.segmentation.training import compiled_forward

    arch = header.get("arch")
    depth = header.get("depth")
    if arch not in ("unet", "resunet") or not isinstance(depth, int):
        raise DataError(f"checkpoint: unknown architecture {arch!r}/depth {depth!r}")
    return compiled_forward(arch, depth)


def load_model(ckpt: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(forward, params, header) of a checkpoint; a corrupt file or wrong arrays -> DataError (one line)."""
    from clinrisk.usecases.segmentation.model import from_numpy, init_params

    arrays, header = load_checkpoint(ckpt)
    forward = model_forward(header)
    want = init_params(0, header["arch"], int(header["base_channels"]), int(header["depth"]))
    for layer, d in want.items():
        for k, v in d.items():
            got = arrays.get(f"{layer}/{k}")
            if got is None or got.shape != v.shape:
                raise DataError(f"{ckpt}: corrupt checkpoint (array {layer}/{k} missing or mis-shaped)")
    return forward, from_numpy(arrays), header
