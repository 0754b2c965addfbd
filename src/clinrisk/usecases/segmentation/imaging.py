"""Image bytes <-> arrays (Pillow), the checks every image and mask must pass, and mask encodings.

Pure functions: bytes in, arrays or a reason out. A decoded image is 2D grayscale; an RGB(A) file whose
colour channels are equal is accepted as grayscale (common for exported scans), any other colour image is
refused with a reason. A mask is binary: values {0, v} for one v > 0 (0/1 and 0/255 are both common).
"""

from __future__ import annotations

import io
import warnings

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class ImageProblem(ValueError):
    """Why bytes are not a usable image or mask; ``check`` is the short machine-readable name."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(reason)
        self.check = check
        self.reason = reason


def encode_png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_gray(data: bytes, what: str = "image", max_side: int | None = None) -> np.ndarray:
    """Decode PNG/JPEG/TIFF bytes to a 2D array (uint8 or uint16); ImageProblem when that is impossible."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageProblem("unreadable", f"{what}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if max_side is not None and max(img.size) > max_side:
                raise ImageProblem(
                    "too_large", f"{what}: {img.size[0]}x{img.size[1]} exceeds {max_side} px per side"
                )
            img.load()
    except ImageProblem:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise ImageProblem(
            "unreadable", f"{what}: not a readable PNG/JPEG/TIFF ({type(exc).__name__})"
        ) from None
    arr = np.asarray(img)
    if arr.ndim == 3:
        channels = arr.shape[2]
        if channels == 4:
            arr, channels = arr[..., :3], 3
        if channels == 1 or (
            channels == 3
            and np.array_equal(arr[..., 0], arr[..., 1])
            and np.array_equal(arr[..., 0], arr[..., 2])
        ):
            arr = arr[..., 0]
        else:
            raise ImageProblem("channels", f"{what}: {channels} colour channels; expected 1 (grayscale)")
    if arr.ndim != 2:
        raise ImageProblem("channels", f"{what}: {arr.ndim}-dimensional pixel array; expected 2D")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype not in (np.uint8, np.uint16):
        if arr.dtype.kind in "iu" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            arr = arr.astype(np.uint16)
        else:
            raise ImageProblem("dtype", f"{what}: pixel type {arr.dtype}; expected 8- or 16-bit unsigned")
    return arr


def binary_mask(mask: np.ndarray) -> np.ndarray:
    """0/1 uint8 from a {0, v} mask; ImageProblem('non_binary') otherwise."""
    values = np.unique(mask)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(str(int(v)) for v in values[:5]) + (", ..." if values.size > 5 else "")
        raise ImageProblem(
            "non_binary",
            f"mask: {values.size} distinct values ({shown}); expected 0 and one foreground value",
        )
    return (mask > 0).astype(np.uint8)


def to_unit(image: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1] (8- and 16-bit)."""
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    return (image.astype(np.float32) / scale).astype(np.float32)


def resize(array: np.ndarray, side: int, nearest: bool) -> np.ndarray:
    """Square resize (nearest for masks, bilinear for images), float32 in, float32 out."""
    if array.shape == (side, side):
        return array.astype(np.float32)
    from PIL import Image

    img = Image.fromarray(array.astype(np.float32), mode="F")
    out = img.resize((side, side), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def rle_encode(mask: np.ndarray) -> dict[str, object]:
    """Column-major run-length encoding (COCO-style counts, starting with a run of zeros)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict[str, object]) -> np.ndarray:
    h, w = (int(v) for v in rle["size"])  # type: ignore[attr-defined]
    flat = np.zeros(h * w, dtype=np.uint8)
    pos, value = 0, 0
    for c in rle["counts"]:  # type: ignore[attr-defined]
        flat[pos : pos + int(c)] = value
        pos += int(c)
        value ^= 1
    return flat.reshape((w, h)).T
