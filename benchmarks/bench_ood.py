"""Out-of-distribution detector quality on a generated population: the bundle's detector (fit on training
rows by `clinrisk train`) against the held-out TEST split (patients never used to fit it) and against a
planted set of anomalous patients, next to the previous z-score/range rule on the same rows.

Runs the product's own steps (generate -> validate -> features -> train) in a temporary output dir, then
prints, from one run: detector method and threshold; false-positive rate on the validation split (stored
in the bundle) and on the test split; planted-anomaly detection rate on both; and the legacy rule's
false-positive rate on the test split. Goals: test-split FPR <= 1 %, planted detection >= 95 %.

Usage:

    .venv/bin/python benchmarks/bench_ood.py                   # 20,000 patients
    .venv/bin/python benchmarks/bench_ood.py --patients 5000   # quick check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]


def step(name: str, sets: list[str]) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "clinrisk", name]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--keep", type=Path, default=None, help="output dir to use (kept); default: a temp dir")
    ap.add_argument("--reuse", action="store_true", help="measure the run already in --keep")
    args = ap.parse_args(argv)

    from clinrisk.bundle import OOD_FILE, load_bundle
    from clinrisk.config import ServingConfig
    from clinrisk.features import FeatureSpec
    from clinrisk.io import list_shards, read_json
    from clinrisk.ood import OODDetector, detector_rates
    from clinrisk.serving.inference import ood_flags, ood_reference

    out = args.keep or Path(tempfile.mkdtemp(prefix="bench-ood-"))
    sets = [f"run.output_dir={out}", "run.name=oodbench", f"generate.n_patients={args.patients}"]
    wall = {s: step(s, sets) for s in ("generate", "validate", "features", "train")} if not args.reuse else {}
    print(f"{args.patients} patients, steps (s): " + ", ".join(f"{k} {v:.1f}" for k, v in wall.items()))

    run_dir = out / "oodbench"
    bundle_dir = run_dir / "bundle"
    bundle = load_bundle(bundle_dir)
    det = read_json(bundle_dir / OOD_FILE)
    shards = list_shards(run_dir / "features")
    test = pl.concat(
        [pl.read_parquet(s).filter(pl.col("split") == "test") for s in shards], how="vertical_relaxed"
    )
    cols = [bundle.feature_names.index(n) for n in det["features"]]
    X = bundle.to_matrix(test)
    rates = detector_rates(det, X[:, cols].astype(np.float64), seed=11, split="test")
    flagged = OODDetector(det, bundle.feature_names).flags(X)
    spec = FeatureSpec.model_validate(bundle.spec)
    legacy = ood_flags(X, ood_reference(bundle, spec), ServingConfig().ood_z)
    legacy_fpr = float(np.mean([bool(f) for f in legacy]))
    v = det["rates"]
    print(
        f"detector {det['method']}: {len(det['features'])} features checked, threshold {det['threshold']:.4f} "
        f"(target {det['target_fpr']:.3%} on training data), fit on {det['fit_rows']} training rows"
    )
    print(
        f"validation split ({v['holdout_rows']} rows): FPR {v['false_positive_rate']:.3%}, "
        f"planted detection {v['planted_detection_rate']:.1%}"
    )
    print(
        f"test split ({rates['holdout_rows']} rows): FPR {rates['false_positive_rate']:.3%} "
        f"(served flags {np.mean([bool(f) for f in flagged]):.3%}), "
        f"planted detection {rates['planted_detection_rate']:.1%}; planted = {rates['planted']}"
    )
    curve = {
        e: detector_rates(det, X[:, cols].astype(np.float64), seed=11, split="test", plant_excess=e)[
            "planted_detection_rate"
        ]
        for e in (0.01, 0.05, 0.1, 0.25)
    }
    print(
        "planted detection on the test split by excess beyond the training max (robust spreads): "
        + ", ".join(f"{e:g}: {r:.1%}" for e, r in curve.items())
    )
    print(f"legacy rule (|z| > 3 or outside the training range) on the test split: FPR {legacy_fpr:.2%}")
    goals = {
        "test_fpr_le_1pct": rates["false_positive_rate"] <= 0.01,
        "planted_detection_ge_95pct": rates["planted_detection_rate"] >= 0.95,
    }
    print("goals:", ", ".join(f"{k}={'met' if ok else 'NOT met'}" for k, ok in goals.items()))
    print(json.dumps({"validation": v, "test": rates, "legacy_test_fpr": legacy_fpr}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
