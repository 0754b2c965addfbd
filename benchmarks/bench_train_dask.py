"""``train.engine``: single-process LightGBM vs lightgbm.dask with 1 and 2 local workers (issue 20).

Same features, same parameters; prints wall time, trees grown / kept, and test AUC per engine, and the
speed-up of 2 workers over 1. On a 2-core machine the dask engine pays for a scheduler, two worker
processes, shipping the rows and growing every ``num_boost_round`` tree (lightgbm.dask cannot early-stop;
the best iteration is replayed afterwards), so it is expected to be slower here: it exists for data that
do not fit one machine, not for speed on one.

    .venv/bin/python benchmarks/bench_train_dask.py                      # synthetic, 20,000 patients
    .venv/bin/python benchmarks/bench_train_dask.py --features outputs/default/latest/merge-features/features
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=Path, default=None, help="a features dataset (default: synthetic)")
    ap.add_argument(
        "--patients", type=int, default=20_000, help="synthetic patients when --features is unset"
    )
    ap.add_argument("--rounds", type=int, default=300, help="train.num_boost_round")
    args = ap.parse_args()

    import polars as pl

    from clinrisk import metrics as M
    from clinrisk.bundle import load_bundle
    from clinrisk.config import load_config
    from clinrisk.evaluate import load_test_frame
    from clinrisk.train import train_model

    with tempfile.TemporaryDirectory() as tmp:
        features = args.features
        if features is None:
            from tests.model.conftest import make_features_dataset

            features = make_features_dataset(Path(tmp) / "features", n_patients=args.patients, seed=11)
        test = load_test_frame(features)
        y = test["label"].cast(pl.Float64).to_numpy()
        base = [f"train.num_boost_round={args.rounds}", "split.temporal=false"]
        if args.features is not None:
            base = [f"train.num_boost_round={args.rounds}"]
        rows = []
        for name, extra in (
            ("lightgbm (1 process)", []),
            ("dask, 1 worker", ["train.engine=dask", "train.dask_workers=1"]),
            ("dask, 2 workers", ["train.engine=dask", "train.dask_workers=2"]),
        ):
            cfg = load_config(None, [*base, *extra])
            out = Path(tmp) / name.replace(" ", "_").replace(",", "")
            t0 = time.perf_counter()
            res = train_model(cfg, features, out)
            wall = time.perf_counter() - t0
            auc = M.roc_auc(y, load_bundle(out).predict_proba(test))
            rows.append((name, wall, res["metadata"]["num_trees"], res["metadata"]["n_train_rows"], auc))
    print(
        f"{'engine':22s} {'wall s':>8s} {'trees kept':>10s} {'train rows':>10s} {'test AUC':>9s} {'ΔAUC':>8s}"
    )
    for name, wall, trees, n, auc in rows:
        print(f"{name:22s} {wall:8.1f} {trees:10d} {n:10d} {auc:9.4f} {auc - rows[0][4]:+8.4f}")
    print(
        f"2 workers vs 1 worker: {rows[1][1] / rows[2][1]:.2f}x speed-up; dask 2 workers vs one process: "
        f"{rows[0][1] / rows[2][1]:.2f}x (2-core machine, shared: timings are upper bounds)"
    )


if __name__ == "__main__":
    main()
