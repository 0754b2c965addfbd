"""The checkpoint file: one ``.npz`` with the UNet's arrays and a JSON header (architecture, training
config, metrics, a SHA-256 of the arrays). Any damage reads as ``DataError("<path>: corrupt checkpoint ...")``.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from clinrisk.errors import DataError

FORMAT = "clinrisk-segmentation-unet/1"


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(str(arrays[k].dtype).encode() + str(arrays[k].shape).encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def checkpoint_bytes(arrays: dict[str, np.ndarray], header: dict[str, Any]) -> bytes:
    """Deterministic bytes (fixed zip timestamps) of a checkpoint."""
    head = {**header, "format": FORMAT, "sha256": _digest(arrays)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ["__header__", *sorted(arrays)]:
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            arr = (
                np.frombuffer(json.dumps(head, sort_keys=True).encode(), np.uint8)
                if name == "__header__"
                else arrays[name]
            )
            npy = io.BytesIO()
            np.save(npy, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, npy.getvalue())
    return buf.getvalue()


def save_checkpoint(path: Path, arrays: dict[str, np.ndarray], header: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(checkpoint_bytes(arrays, header))
    tmp.replace(path)  # never a half-written checkpoint under the real name


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        header = json.loads(bytes(arrays.pop("__header__")).decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: corrupt checkpoint ({type(exc).__name__})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} checkpoint")
    if header.get("sha256") != _digest(arrays):
        raise DataError(f"{path}: corrupt checkpoint (array checksum mismatch)")
    return arrays, header
