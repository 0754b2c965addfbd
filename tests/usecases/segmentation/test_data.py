"""Generator, ingestion of image/mask folders, validation with quarantine reasons, manifest schema, split."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from clinrisk.errors import ConfigError, DataError
from clinrisk.usecases import get
from clinrisk.usecases.base import QUARANTINE_REASON_COLUMNS, RawShard
from clinrisk.usecases.segmentation.dataset import load_image_set, patient_split, split_rows
from clinrisk.usecases.segmentation.imaging import decode_gray, encode_png, rle_decode, rle_encode
from clinrisk.usecases.segmentation.plugin import RAW_COLUMNS, patient_key
from clinrisk.usecases.segmentation.schemas import MANIFEST_SCHEMA
from tests.usecases.segmentation.conftest import tiny_cfg

SEG = get("segmentation")


def _png(a: np.ndarray) -> bytes:
    return encode_png(a.astype(np.uint8))


def _bytes(a: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(a)
    if mode:
        img = img.convert(mode)
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_generator_is_deterministic_with_known_binary_masks_and_several_images_per_patient(
    tmp_path: Path,
) -> None:
    cfg = tiny_cfg(tmp_path)
    plan = SEG.source.plan(cfg)
    assert plan["n_shards"] == 2  # 8 patients in blocks of 4: the plan owns the fan-out
    a, b = SEG.source.generate_shard(cfg, plan, 0), SEG.source.generate_shard(cfg, plan, 0)
    assert a.tables["images"].equals(b.tables["images"]) and a.truth is not None and a.truth.equals(b.truth)
    t = a.tables["images"]
    assert t.group_by("patient_id").len()["len"].to_list() == [2] * 4
    masks = [decode_gray(m) for m in t["mask"]]
    assert all(set(np.unique(m)) <= {0, 255} for m in masks)
    # truth agrees with the stored mask, and lesions of both contrasts and varied sizes occur over the set
    assert [int((m > 0).sum()) for m in masks] == a.truth["lesion_pixels"].to_list()
    other = SEG.source.generate_shard(tiny_cfg(tmp_path, "run.seed=6"), plan | {"seed": 6}, 0)
    assert not other.tables["images"]["image"].equals(t["image"])  # the seed matters


def test_sites_drift_in_intensity(tmp_path: Path) -> None:
    cfg = tiny_cfg(
        tmp_path,
        "params.generate.n_patients=24",
        "params.generate.patients_per_shard=24",
        "params.generate.n_sites=3",
    )
    raw = SEG.source.generate_shard(cfg, SEG.source.plan(cfg), 0).tables["images"]
    means = (
        raw.with_columns(
            pl.col("image")
            .map_elements(lambda b: float(decode_gray(b).mean()), return_dtype=pl.Float64)
            .alias("m")
        )
        .group_by("site")
        .agg(pl.col("m").mean())
    )
    assert means.height >= 2 and means["m"].max() - means["m"].min() > 3  # grey levels differ by site


def _row(
    image_id: str, image: bytes | None, mask: bytes | None, file: str | None = None
) -> dict[str, object]:
    return {
        "image_id": image_id,
        "patient_id": 1,
        "patient": "p1",
        "site": "s",
        "file": file or f"{image_id}.png",
        "image": image,
        "mask": mask,
    }


def test_validation_quarantines_bad_files_with_reasons(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, "params.data.require_nonempty_mask=true")
    img = (np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[5:10, 5:10] = 255
    rows = [
        _row("good", _png(img), _png(mask)),
        _row("good_jpeg_tiff", _bytes(img, "JPEG"), _bytes(mask, "TIFF"), "good_jpeg_tiff.jpg"),
        _row("unreadable", b"this is not an image", _png(mask)),
        _row("mismatch", _png(img), _png(np.zeros((16, 32), np.uint8))),
        _row("empty", _png(img), _png(np.zeros_like(mask))),
        _row("nonbinary", _png(img), _png((np.arange(32 * 32).reshape(32, 32) % 7).astype(np.uint8))),
        _row("colour", _bytes(np.stack([img, img[::-1], img], axis=2), "PNG"), _png(mask)),
        _row("no_mask", _png(img), None),
        _row("truncated", _png(img)[:60], _png(mask)),
    ]
    raw = RawShard({"images": pl.DataFrame(rows, schema=RAW_COLUMNS)})
    res = SEG.schema.validate(cfg, raw, 0)
    assert res.tables["images"]["image_id"].to_list() == ["good", "good_jpeg_tiff"]
    q = res.quarantine["images"]
    assert set(QUARANTINE_REASON_COLUMNS) <= set(q.columns)
    checks = dict(zip(q["image_id"].to_list(), q["_check"].to_list(), strict=True))
    assert checks == {
        "unreadable": "unreadable",
        "mismatch": "shape_mismatch",
        "empty": "empty_mask",
        "nonbinary": "non_binary",
        "colour": "channels",
        "no_mask": "missing_mask",
        "truncated": "unreadable",
    }
    assert all(
        r.startswith(f) for r, f in zip(q["_reason"], q["file"], strict=True)
    )  # each reason names its file
    assert res.stats["rows_in"] == len(rows) == res.tables["images"].height + q.height
    MANIFEST_SCHEMA.validate(res.tables["images"].drop("image", "mask"))
    assert res.tables["images"]["mask_coverage"][0] == pytest.approx(25 / 1024)


def test_duplicate_image_ids_are_quarantined_by_the_manifest_rules(tmp_path: Path) -> None:
    img, mask = _png(np.full((32, 32), 9, np.uint8)), _png(np.zeros((32, 32), np.uint8))
    raw = RawShard(
        {
            "images": pl.DataFrame(
                [_row("a", img, mask), _row("a", img, mask), _row("b", img, mask)], schema=RAW_COLUMNS
            )
        }
    )
    res = SEG.schema.validate(tiny_cfg(tmp_path), raw, 0)
    assert res.tables["images"]["image_id"].to_list() == ["b"]
    assert res.quarantine["images"]["_check"].to_list() == ["unique", "unique"]


def test_ingest_pairs_image_and_mask_folders_by_file_name(tmp_path: Path) -> None:
    src = tmp_path / "export"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    img = (np.random.default_rng(0).random((48, 48)) * 255).astype(np.uint8)
    mask = np.zeros((48, 48), np.uint8)
    mask[10:20, 10:30] = 1
    for i in range(3):
        Image.fromarray(img).save(src / "images" / f"case{i}_slice1.png")
        Image.fromarray(mask).save(src / "masks" / f"case{i}_slice1.png")
    Image.fromarray(img).save(src / "images" / "case0_slice2.tif")
    Image.fromarray(mask * 255).save(src / "masks" / "case0_slice2.tif")
    Image.fromarray(img).save(src / "images" / "case9_slice1.jpg")  # no mask
    (src / "images" / "notes.txt").write_text("ignored: not an image suffix")
    cfg = tiny_cfg(tmp_path, f"params.data.source={src}", "params.data.train_size=32")
    raw = {k: v.collect() for k, v in SEG.source.ingest(cfg, src).items()}
    assert raw["images"].height == 5
    assert raw["images"].filter(pl.col("patient") == "case0").height == 2  # patient = stem before "_"
    data = load_image_set(cfg, SEG.params(cfg))
    assert data.manifest.height == 4 and data.images.shape == (4, 32, 32)
    assert data.quarantine["_check"].to_list() == ["missing_mask"]
    assert set(np.unique(data.masks)) == {0, 1}
    with pytest.raises(DataError, match="missing"):
        SEG.source.ingest(cfg, tmp_path / "nowhere")
    (tmp_path / "nomasks" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="masks: missing folder"):
        SEG.source.ingest(cfg, tmp_path / "nomasks")


def test_patient_grouped_split_keeps_every_patient_on_one_side(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path)
    data = load_image_set(cfg, SEG.params(cfg))
    tr, va = split_rows(data, 0.25, cfg.run.seed)
    pids = data.manifest["patient_id"].to_numpy()
    assert set(pids[tr]).isdisjoint(set(pids[va])) and tr.size + va.size == data.manifest.height
    assert len(set(pids[va])) == 2  # ceil(0.25 * 8)
    assert patient_split(list(range(100)), 0.2, 1) == patient_split(list(range(100)), 0.2, 1)
    with pytest.raises(DataError, match="needs >= 2"):
        patient_split([3, 3], 0.5, 1)


def test_rle_round_trip_and_patient_keys() -> None:
    m = (np.random.default_rng(1).random((17, 23)) > 0.7).astype(np.uint8)
    assert np.array_equal(rle_decode(rle_encode(m)), m)
    assert patient_key("p000012") == 12 and patient_key("17") == 17
    assert patient_key("case-x") == patient_key("case-x") != patient_key("case-y")


def test_tabular_steps_refuse_in_one_line(tmp_path: Path) -> None:
    assert SEG.model_family == "own"
    with pytest.raises(ConfigError, match="no feature table"):
        SEG.features.fit_spec(tiny_cfg(tmp_path), {})


def test_bad_params_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params"):
        tiny_cfg(tmp_path, "params.data.train_size=36", "params.model.depth=3")  # 36 px not divisible by 8
    with pytest.raises(ConfigError, match="params"):
        tiny_cfg(tmp_path, "params.train.lr=-1")


def test_the_platform_data_commands_generate_and_validate_segmentation(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clinrisk.cli.app import build_app
    from tests.usecases.segmentation.conftest import TINY

    runner, app = CliRunner(), build_app()
    common = ["--config", str(TINY), "--set", f"run.output_dir={tmp_path}"]
    r = runner.invoke(app, ["--usecase", "segmentation", "generate", *common])
    assert r.exit_code == 0, r.output
    assert "generated 16 rows in 2 shards" in r.output
    r = runner.invoke(app, ["--usecase", "segmentation", "validate", *common])
    assert r.exit_code == 0, r.output
    assert "16 valid, 0 quarantined" in r.output
    assert (tmp_path / "seg-tiny" / "raw" / "truth" / "shard=001" / "part.parquet").is_file()
