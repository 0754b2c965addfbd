"""The V1 endpoint through the platform's KServe ModelServer app: masks + confidence, and clean refusals."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("jax")

from PIL import Image

from clinrisk.usecases.segmentation.imaging import decode_gray, encode_png, rle_decode


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def client(trained: tuple[Any, dict, Path]) -> Any:
    from fastapi.testclient import TestClient

    from clinrisk.serving.app import create_app
    from clinrisk.serving.server import model_server
    from clinrisk.usecases.segmentation.config import ServeParams
    from clinrisk.usecases.segmentation.serving import SegmentationModel

    cfg, _, ckpt = trained
    serving = cfg.serving.model_copy(update={"max_body_bytes": 2_000_000})
    model = SegmentationModel(
        "segmentation", ckpt, serving, ServeParams(max_side=256, max_image_bytes=200_000)
    )
    model.load()
    return TestClient(create_app(model_server(serving, model), serving, None))


URL = "/v1/models/segmentation:predict"


def test_predict_returns_a_mask_per_image_with_confidence(client: Any) -> None:
    img = (np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)
    r = client.post(
        URL,
        json={
            "instances": [
                {"image_b64": _b64(encode_png(img)), "id": "a"},
                {"image_b64": _b64(encode_png(img[:32, :32]))},
            ]
        },
    )
    assert r.status_code == 200, r.text
    p = r.json()["predictions"]
    assert [x["id"] for x in p] == ["a", "1"]
    mask = decode_gray(base64.b64decode(p[0]["mask_png_b64"]))
    assert mask.shape == (64, 80) and set(np.unique(mask)) <= {0, 255}
    assert int((mask > 0).sum()) == p[0]["mask_pixels"] and 0.0 <= p[0]["confidence"] <= 1.0


def test_rle_masks(trained: tuple[Any, dict, Path]) -> None:
    from clinrisk.usecases.segmentation.config import ServeParams
    from clinrisk.usecases.segmentation.serving import SegmentationModel

    cfg, _, ckpt = trained
    model = SegmentationModel("segmentation", ckpt, cfg.serving, ServeParams(mask_format="rle"))
    model.load()
    img = (np.random.default_rng(1).random((32, 32)) * 255).astype(np.uint8)
    out = model.segment({"instances": [{"image_b64": _b64(encode_png(img))}]})["predictions"][0]
    assert (
        rle_decode(out["mask_rle"]).shape == (32, 32)
        and int(rle_decode(out["mask_rle"]).sum()) == out["mask_pixels"]
    )


def _rgb_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(2).random((32, 32, 3)) * 255).astype(np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


@pytest.mark.parametrize(
    ("instance", "status", "words"),
    [
        ({"image_b64": _b64(b"definitely not an image")}, 400, "not a readable"),
        ({"image_b64": "%%%not base64%%%"}, 400, "not valid base64"),
        ({"image_b64": _b64(_rgb_png())}, 400, "3 colour channels"),
        ({"image_b64": _b64(encode_png(np.zeros((8, 8), np.uint8)))}, 400, "at least 16"),
        ({"image_b64": _b64(encode_png(np.zeros((300, 40), np.uint8)))}, 413, "exceeds 256"),
        ({"image_b64": _b64(np.random.default_rng(3).bytes(300_000))}, 413, "over 200000 bytes"),
        ({"img": "x"}, 400, "instances[0].image_b64: missing"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(
    client: Any, instance: dict, status: int, words: str
) -> None:
    r = client.post(URL, json={"instances": [instance]})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_malformed_bodies(client: Any) -> None:
    assert client.post(URL, json={"instances": []}).status_code == 400
    assert (
        client.post(URL, content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 400
    )
    r = client.post(URL, content=b"x" * 2_100_000, headers={"content-type": "application/json"})
    assert r.status_code == 413
