"""The segmentation predictor: a ``kserve.Model`` served by the platform's ModelServer app (V1 protocol).

Request: ``{"instances": [{"image_b64": "<base64 PNG/JPEG/TIFF>", "id": "optional"}, ...]}``.
Response: ``{"predictions": [{"id", "height", "width", "mask_png_b64" | "mask_rle", "mask_pixels",
"confidence"}]}``. Refusals (the platform's error contract, ``{"error": ...}``): not JSON / no instances /
no or bad base64 / bytes that are no image / a colour image / a side below 16 px -> 400; one image over
``params.serve.max_image_bytes`` or ``params.serve.max_side`` -> 413 (the whole body over
``serving.max_body_bytes`` is a 413 from the app itself).
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clinrisk.serving.kserve_import import import_kserve

kserve = import_kserve()

from kserve.errors import ModelNotReady  # noqa: E402

from clinrisk.serving.request import InvalidRequest, ServingError, decode_body  # noqa: E402
from clinrisk.usecases.segmentation.config import ServeParams  # noqa: E402
from clinrisk.usecases.segmentation.imaging import ImageProblem, decode_gray, encode_png, rle_encode  # noqa: E402

if TYPE_CHECKING:
    from clinrisk.config import ServingConfig

log = logging.getLogger("clinrisk.serving")
MIN_SIDE = 16


class ImageTooLarge(ServingError):
    status = 413


def decode_instances(body: Any, cfg: ServingConfig, sp: ServeParams) -> list[tuple[str, np.ndarray]]:
    """(id, 2D image) per instance, or a ServingError naming the instance and the problem."""
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or not body["instances"]:
        raise InvalidRequest(
            'body must be {"instances": [{"image_b64": ...}, ...]} with at least one instance',
            reason="request_shape",
        )
    instances = body["instances"]
    if len(instances) > cfg.max_instances:
        raise InvalidRequest(
            f"{len(instances)} instances; at most {cfg.max_instances}", reason="too_many_instances"
        )
    out = []
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        if not isinstance(inst, dict) or not isinstance(inst.get("image_b64"), str):
            raise InvalidRequest(
                f"{where}.image_b64: missing (a base64-encoded PNG/JPEG/TIFF)", reason="missing_field"
            )
        text = inst["image_b64"]
        if len(text) * 3 // 4 > sp.max_image_bytes:
            raise ImageTooLarge(
                f"{where}.image_b64: over {sp.max_image_bytes} bytes", reason="image_too_large"
            )
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{where}.image_b64: not valid base64", reason="bad_base64") from None
        try:
            image = decode_gray(data, f"{where}.image_b64", sp.max_side)
        except ImageProblem as exc:
            if exc.check == "too_large":
                raise ImageTooLarge(exc.reason, reason="image_too_large") from None
            raise InvalidRequest(exc.reason, reason=f"image_{exc.check}") from None
        if min(image.shape) < MIN_SIDE:
            raise InvalidRequest(
                f"{where}.image_b64: {image.shape[1]}x{image.shape[0]} px; at least {MIN_SIDE} per side",
                reason="image_too_small",
            )
        out.append((str(inst.get("id", i)), image))
    return out


class SegmentationModel(kserve.Model):  # type: ignore[misc,name-defined]
    """Construct, :meth:`load` (a corrupt checkpoint raises DataError), then serve."""

    def __init__(self, name: str, ckpt: Path, cfg: ServingConfig, sp: ServeParams) -> None:
        super().__init__(name)
        self.ckpt, self.cfg, self.sp = Path(ckpt), cfg, sp
        self.forward: Any = None
        self.params: Any = None
        self.header: dict[str, Any] = {}
        self.ready = False

    def load(self) -> bool:
        from clinrisk.usecases.segmentation.run import load_model, predict_images

        self.forward, self.params, self.header = load_model(self.ckpt)
        side = int(self.header["train_size"])
        predict_images(
            self.forward, self.params, self.header, [np.zeros((side, side), np.uint8)]
        )  # compile + self-check
        self.ready = True
        log.info(
            "model %s ready: checkpoint %s (%s, val Dice %.4f)",
            self.name,
            self.ckpt,
            self.header.get("arch"),
            float(self.header.get("val_dice", float("nan"))),
        )
        return True

    def start(self) -> None:
        """Readiness is decided by :meth:`load` alone."""

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        return decode_body(payload, headers)

    def segment(self, body: Any) -> dict[str, Any]:
        from clinrisk.usecases.segmentation.run import predict_images

        decoded = decode_instances(body, self.cfg, self.sp)
        results = predict_images(self.forward, self.params, self.header, [im for _, im in decoded])
        preds = []
        for (ident, image), (mask, conf) in zip(decoded, results, strict=True):
            pred: dict[str, Any] = {
                "id": ident,
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "mask_pixels": int(mask.sum()),
                "confidence": round(conf, 6),
            }
            if self.sp.mask_format == "rle":
                pred["mask_rle"] = rle_encode(mask)
            else:
                pred["mask_png_b64"] = base64.b64encode(encode_png(mask * 255)).decode()
            preds.append(pred)
        return {"predictions": preds}

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        import asyncio

        if not self.ready:
            raise ModelNotReady(self.name)
        return await asyncio.get_running_loop().run_in_executor(None, self.segment, payload)


def serve(ckpt: Path, cfg: ServingConfig, sp: ServeParams) -> None:
    """Load the checkpoint, then serve until interrupted (blocks)."""
    from clinrisk.serving.app import create_app, load_token
    from clinrisk.serving.server import configure_logging, model_server, run_http

    configure_logging()
    model = SegmentationModel(cfg.model_name, ckpt, cfg, sp)
    model.load()
    server = model_server(cfg, model)
    run_http(create_app(server, cfg, load_token(cfg)), cfg, server)
