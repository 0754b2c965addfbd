"""The main job's serving smoke test for segmentation (``clinrisk run --usecase segmentation``).

After the pipeline registered a checkpoint, the real predictor serves it: ``clinrisk segmentation serve``
(kserve.ModelServer, V1 protocol) in a subprocess on 127.0.0.1, answering one request made of validation
images from the run's own validated dataset. The answer must hold one mask per image, at the image's size,
with a confidence in [0, 1]; anything else (the server not getting ready, a refusal, a wrong answer) is a
StageError carrying the server's log. The server is stopped in every case.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinrisk.errors import DataError, StageError

if TYPE_CHECKING:
    from clinrisk.config import ClinriskConfig

N_IMAGES = 2
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def checkpoint_of(cfg: ClinriskConfig, model_uri: str, dest: Path) -> Path:
    """The checkpoint file of ``models:/<name>/<version|@alias>`` (downloaded into ``dest``), or of the
    model folder a run without tracking returns."""
    from clinrisk.usecases.segmentation.loading import CHECKPOINT

    if not model_uri.startswith("models:/"):
        ckpt = Path(model_uri) / CHECKPOINT
        if not ckpt.is_file():
            raise DataError(f"{model_uri}: no {CHECKPOINT} in the model folder")
        return ckpt
    import mlflow.artifacts

    from clinrisk.tracking import configure, mlflow_client, parse_model_uri

    configure(cfg)
    client = mlflow_client()
    name, ref = parse_model_uri(model_uri)
    saved = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"  # its bar would be the only non-step output of the main job
    try:
        version = (
            client.get_model_version(name, ref)
            if ref.isdigit()
            else client.get_model_version_by_alias(name, ref)
        )
        local = mlflow.artifacts.download_artifacts(f"{version.source}/{CHECKPOINT}", dst_path=str(dest))
    except Exception as exc:
        raise DataError(
            f"{model_uri}: cannot resolve registered model ({str(exc).splitlines()[0][:200]})"
        ) from None
    finally:
        if saved is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = saved
    return Path(local)


def validation_request(cfg: ClinriskConfig, validated_dir: Path, n: int = N_IMAGES) -> dict[str, Any]:
    """V1 instances: the stored (PNG) bytes of the first ``n`` validation-patient images of the run."""
    import polars as pl

    from clinrisk.io import list_shards
    from clinrisk.usecases.segmentation.dataset import patient_split
    from clinrisk.usecases.segmentation.run import params

    shards = list_shards(Path(validated_dir))
    if not shards:
        raise DataError(f"{validated_dir}: no validated image shard")
    table = pl.concat([pl.read_parquet(f, columns=["image_id", "patient_id", "image"]) for f in shards])
    table = table.sort("image_id")
    val = patient_split(table["patient_id"].to_list(), params(cfg).train.val_fraction, cfg.run.seed)
    rows = table.filter(pl.col("patient_id").is_in(sorted(val))).head(n)
    return {
        "instances": [
            {"id": image_id, "image_b64": base64.b64encode(image).decode()}
            for image_id, image in rows.select("image_id", "image").iter_rows()
        ]
    }


def check_answer(request: dict[str, Any], response: dict[str, Any]) -> None:
    """One mask per image, at the image's own size, with a confidence in [0, 1] (else StageError)."""
    from clinrisk.usecases.segmentation.imaging import decode_gray, rle_decode

    preds = response.get("predictions")
    sent = request["instances"]
    if not isinstance(preds, list) or len(preds) != len(sent):
        raise StageError(f"serving smoke test: {len(sent)} images sent, answer {str(response)[:300]}")
    for inst, pred in zip(sent, preds, strict=True):
        image = decode_gray(base64.b64decode(inst["image_b64"]))
        if "mask_png_b64" in pred:
            mask = decode_gray(base64.b64decode(pred["mask_png_b64"]))
        else:
            mask = rle_decode(pred["mask_rle"])
        if pred.get("id") != inst["id"] or mask.shape != image.shape or not 0 <= pred["confidence"] <= 1:
            raise StageError(
                f"serving smoke test: image {inst['id']} ({image.shape[1]}x{image.shape[0]}): answer "
                f"id {pred.get('id')!r}, mask {mask.shape[1]}x{mask.shape[0]}, "
                f"confidence {pred.get('confidence')}"
            )


def serving_smoke_test(
    cfg: ClinriskConfig, model_uri: str, validated_dir: Path, timeout_s: float = 180.0
) -> dict[str, Any]:
    """Serve ``model_uri``'s checkpoint on 127.0.0.1, send validation images, check the masks, stop.

    Returns ``{"url", "bundle", "request", "response"}`` (``bundle``: the checkpoint served), the shape of
    the platform's smoke test (:func:`clinrisk.smoke.serving_smoke_test`)."""
    import yaml

    from clinrisk.serving.client import predict
    from clinrisk.smoke import free_port, local_server, wait_serving

    request = validation_request(cfg, validated_dir)
    workdir = Path(tempfile.mkdtemp(prefix="clinrisk-seg-smoke-"))
    ckpt = checkpoint_of(cfg, model_uri, workdir)
    config_file = workdir / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    host, port = "127.0.0.1", free_port()
    log = workdir / "smoke-server.log"
    cmd = [
        sys.executable, "-m", "clinrisk", "segmentation", "serve", "--ckpt", str(ckpt),
        "--config", str(config_file), "--set", f"serving.host={host}", "--set", f"serving.http_port={port}",
    ]  # fmt: skip
    base = f"http://{host}:{port}"
    with local_server(cmd, log) as proc:
        try:
            wait_serving(proc, base, cfg.serving.model_name, timeout_s)
            response = predict(base, request["instances"], cfg.serving.model_name, timeout_s=60.0)
            check_answer(request, response)
        except Exception as exc:
            raise StageError(
                f"serving smoke test failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                f"\n--- server log ---\n{log.read_text()[-3000:]}"
            ) from exc
    return {"url": base, "bundle": str(ckpt), "request": request, "response": response}
