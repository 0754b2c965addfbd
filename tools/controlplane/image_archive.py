#!/usr/bin/env python3
"""Pack one static binary into a single-layer image archive (`docker save` format) for `ctr images import`.

    image_archive.py BINARY NAME:TAG UID OUT.tar

The data node's containerd can pull from no registry here, so its two images (tools/controlplane/nodeimages:
pause, netcheck) are built from source and imported. The binary becomes /<basename>, the entrypoint, run as
UID:UID. The archive is reproducible: fixed mtimes and ownership, so the same binary gives the same image id.
"""

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: image_archive.py BINARY NAME:TAG UID OUT.tar", file=sys.stderr)
        return 2
    binary, tag, uid, out = Path(argv[0]), argv[1], int(argv[2]), Path(argv[3])
    if not binary.is_file():
        print(f"error: {binary}: no such file", file=sys.stderr)
        return 2
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, binary.name, binary.read_bytes(), 0o755)
    layer_bytes = layer.getvalue()
    layer_id = hashlib.sha256(layer_bytes).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [f"/{binary.name}"], "User": f"{uid}:{uid}"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": f"{config_id}.json", "RepoTags": [tag], "Layers": [f"{layer_id}/layer.tar"]}]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, f"{config_id}.json", config_bytes)
        _add(tar, f"{layer_id}/layer.tar", layer_bytes)
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
