"""Bundle integrity on load: the content must be what ``bundle_version`` names, and a truncated model file
is refused before LightGBM parses it (its parser aborts the process natively on one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clinrisk.bundle import (
    MODEL_FILE,
    OOD_FILE,
    check_model_text,
    content_hash,
    file_hashes,
    load_bundle,
)
from clinrisk.errors import DataError


def _copy(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "b"))


def _rehash(root: Path) -> None:
    """Make metadata.json agree with the (tampered) content, as a careless tool would."""
    meta = json.loads((root / "metadata.json").read_text())
    meta["file_sha256"] = file_hashes(root)
    meta["bundle_version"] = content_hash(root)[:16]
    (root / "metadata.json").write_text(json.dumps(meta))


def test_bundle_loads_and_records_its_file_hashes(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    assert b.version == content_hash(bundle_dir)[:16]
    assert set(b.metadata["file_sha256"]) >= {MODEL_FILE, OOD_FILE, "threshold.json"}


def test_model_with_trees_removed_is_refused_naming_the_file(bundle_dir: Path, tmp_path: Path) -> None:
    import lightgbm as lgb

    root = _copy(bundle_dir, tmp_path)
    booster = lgb.Booster(model_file=str(root / MODEL_FILE))
    assert booster.num_trees() > 2
    (root / MODEL_FILE).write_text(booster.model_to_string(num_iteration=2))  # a valid, smaller model
    with pytest.raises(DataError, match=r"^bundle file model\.txt: changed since the bundle was written"):
        load_bundle(root)


@pytest.mark.parametrize("name", ["threshold.json", "calibration.json", OOD_FILE])
def test_any_changed_file_is_named(bundle_dir: Path, tmp_path: Path, name: str) -> None:
    root = _copy(bundle_dir, tmp_path)
    text = (root / name).read_text()
    (root / name).write_text(text.replace("0.", "0.0", 1))
    with pytest.raises(DataError, match=rf"^bundle file {name}: changed"):
        load_bundle(root)


def test_removed_optional_file_is_named(bundle_dir: Path, tmp_path: Path) -> None:
    root = _copy(bundle_dir, tmp_path)
    (root / OOD_FILE).unlink()
    with pytest.raises(DataError, match=rf"^bundle file {OOD_FILE}: missing"):
        load_bundle(root)


def test_bundle_without_file_hashes_is_checked_against_its_version(bundle_dir: Path, tmp_path: Path) -> None:
    root = _copy(bundle_dir, tmp_path)
    meta = json.loads((root / "metadata.json").read_text())
    del meta["file_sha256"]
    (root / "metadata.json").write_text(json.dumps(meta))
    load_bundle(root)  # an older bundle (no per-file hashes) still loads when intact
    (root / "threshold.json").write_text((root / "threshold.json").read_text().replace("0.", "0.0", 1))
    with pytest.raises(DataError, match="content hash does not match bundle_version"):
        load_bundle(root)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.3, 0.5, 0.8, 0.95, 0.999])
def test_truncated_model_is_refused_before_lightgbm_even_when_rehashed(
    bundle_dir: Path, tmp_path: Path, fraction: float
) -> None:
    root = _copy(bundle_dir, tmp_path)
    data = (root / MODEL_FILE).read_bytes()
    (root / MODEL_FILE).write_bytes(data[: int(len(data) * fraction)])
    _rehash(root)
    with pytest.raises(DataError, match=r"^bundle file model\.txt: "):
        load_bundle(root)


def test_model_text_check_accepts_the_real_file_and_rejects_a_shuffled_one(
    bundle_dir: Path, tmp_path: Path
) -> None:
    check_model_text(bundle_dir / MODEL_FILE)
    data = (bundle_dir / MODEL_FILE).read_text()
    bad = tmp_path / MODEL_FILE
    bad.write_text(data.replace("Tree=1\n", "Tree=9\n", 1))
    with pytest.raises(DataError, match="tree 1 of"):
        check_model_text(bad)
