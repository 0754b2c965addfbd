"""Print the lock lines the serving image needs: the dependency closure of the serving roots.

The serving image runs `clinrisk serve` (kserve.ModelServer + the predictor on a bundle in /mnt/models): it
needs no training stack. The closure is walked through the installed metadata of the host venv that
build.sh uses (the same pins as requirements.lock), so it follows the lock exactly.
    python images/serving_requirements.py <requirements-image.txt>  >  requirements-serving.txt
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

# What `clinrisk serve` imports (see src/clinrisk/serving/ and bundle.py); pandera: config/schemas are
# imported by the CLI; setuptools: grpcio-tools (kserve) needs pkg_resources at runtime; threadpoolctl: a
# declared dependency of clinrisk (the evaluation's one BLAS thread), tiny and pure Python, so the image's
# `pip check` stays clean.
ROOTS = ["kserve", "lightgbm", "polars", "pyarrow", "pandas", "pandera[polars]", "numpy", "pydantic", "pyyaml",
         "typer", "tqdm", "httpx", "prometheus-client", "setuptools", "threadpoolctl"]  # fmt: skip
# Training/tracking only — must not end up in the serving image (checked by tests/k8s/test_images.py).
TRAINING_ONLY = {
    "kfp",
    "kfp-kubernetes",
    "mlflow",
    "mlflow-skinny",
    "matplotlib",
    "scikit-learn",
    "docker",
    "dask",
    "distributed",
}


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canon(req.name)
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            raise SystemExit(f"error: {req.name}: not installed in {sys.prefix} (run make venv)") from None
        for text in dist.requires or []:
            sub = Requirement(text)
            env_ok = sub.marker is None or any(
                sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})
            )
            if env_ok:
                todo.append(sub)
    return {s for s in seen if "[" not in s}


def main() -> None:
    keep = closure(ROOTS)
    leaked = keep & TRAINING_ONLY
    if leaked:
        raise SystemExit(f"error: serving closure pulls training-only packages: {sorted(leaked)}")
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
        print("error: usage: serving_requirements.py <requirements file> (an existing file)", file=sys.stderr)
        raise SystemExit(2)
    for line in Path(sys.argv[1]).read_text().splitlines():
        name = line.split("==")[0].strip()
        if name and not name.startswith("#") and canon(name) in keep:
            print(line)


if __name__ == "__main__":
    main()
