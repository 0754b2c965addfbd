"""Print the lock lines a segmentation image adds to the image it is built FROM.

The segmentation use case's model (a JAX UNet) needs jax, jaxlib and optax, which the shared pipeline and
serving images leave out (images/exclude-from-image.txt: the tabular images stay free of JAX). Its two images
are those images plus the closure of a few roots, minus what the base image already holds:
    python images/segmentation_requirements.py <base image's requirements.txt> ROOT...  >  extra.txt
(pipeline image: roots jax optax; serving image: jax pillow, since `clinrisk segmentation serve` never
imports optax). The pins are requirements.lock's, walked through the host venv's installed metadata (the
same closure as images/serving_requirements.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from serving_requirements import canon, closure

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"


def names(path: Path) -> set[str]:
    out = set()
    for line in path.read_text().splitlines():
        name = line.split("==")[0].strip()
        if name and not name.startswith("#"):
            out.add(canon(name))
    return out


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: segmentation_requirements.py <base requirements.txt> ROOT...")
    have = names(Path(sys.argv[1]))
    need = closure(sys.argv[2:])
    pinned = {canon(line.split("==")[0]): line for line in LOCK.read_text().splitlines() if "==" in line}
    unpinned = sorted(n for n in need - have if n not in pinned)
    if unpinned:
        raise SystemExit(
            f"error: {', '.join(unpinned)}: needed by {sys.argv[2:]} but not in requirements.lock"
        )
    for name in sorted(need - have):
        print(pinned[name])


if __name__ == "__main__":
    main()
