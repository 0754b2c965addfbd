"""Training benchmark: wall time and peak RSS of ``clinrisk.train.train_model`` (out-of-core lgb.Sequence over
Parquet row groups), optionally against an in-memory baseline (whole training matrix read with polars,
then ``lgb.Dataset`` from numpy) on the same data and parameters.

    .venv/bin/python benchmarks/bench_train.py --features outputs/default/features
    .venv/bin/python benchmarks/bench_train.py --rows 1000000 --n-features 150 --compare-inmemory
    .venv/bin/python benchmarks/bench_train.py --rows 200000 --n-features 60 --rounds 50    # quick
    .venv/bin/python benchmarks/bench_train.py --rows 500000 --n-features 40 --rounds 30 --scale 1,4

``--scale`` trains on fresh synthetic datasets of ``--rows`` × each factor and prints peak RSS against
training rows: the fixed part, the bytes per training row (slope) and the extrapolation to 200M raw rows.

Without ``--features`` a wide synthetic features dataset in the contract layout is written to a temp dir
(Float32 lab-like columns with missingness, two Enum categoricals, a label driven by a few of them).
Each measurement runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ROWS_PER_SHARD = 250_000
SPLITS = ["train", "validation", "test", "embargo", "unused"]


def make_wide_features(out: Path, rows: int, n_features: int, seed: int = 0) -> Path:
    """Contract-shaped features dataset with ``n_features`` features, ~8 % positives, 60/20/20 split."""
    import numpy as np
    import polars as pl

    from clinrisk.io import shard_file

    n_shards = max(1, round(rows / ROWS_PER_SHARD))
    per = rows // n_shards
    names = ["sex", "insurance"] + [f"f{j:03d}" for j in range(n_features - 2)]
    cats = {"sex": ["F", "M"], "insurance": ["commercial", "medicaid", "medicare", "uninsured", "__OTHER__"]}
    for s in range(n_shards):
        rng = np.random.default_rng(seed + s)
        pid = np.arange(per, dtype=np.int64) // 8 + s * 10_000_000  # 8 rows per patient
        X = rng.normal(size=(per, n_features - 2)).astype(np.float32)
        X[rng.random(X.shape) < 0.15] = np.nan
        eta = (
            -3.0 + 1.2 * np.nan_to_num(X[:, 0]) + 0.6 * np.nan_to_num(X[:, 1]) + 0.3 * np.nan_to_num(X[:, 2])
        )
        y = (rng.random(per) < 1 / (1 + np.exp(-eta))).astype(np.float32)
        bucket = pid % 10
        split = np.where(bucket < 6, 0, np.where(bucket < 8, 1, 2))
        cols = {
            "patient_id": pl.Series(pid),
            "year": pl.Series(np.full(per, 2010), dtype=pl.Int16),
            "split": pl.Series([SPLITS[k] for k in split], dtype=pl.Enum(SPLITS)),
            "sex": pl.Series(rng.choice(cats["sex"], per), dtype=pl.Enum(cats["sex"])),
            "insurance": pl.Series(rng.choice(cats["insurance"][:4], per), dtype=pl.Enum(cats["insurance"])),
        }
        df = (
            pl.DataFrame(cols)
            .hstack(pl.DataFrame(X, schema=names[2:]))
            .with_columns(
                pl.Series("label", y),
                pl.Series("label_rec", y.astype(np.int8)),
                pl.Series("sample_weight", np.ones(per, dtype=np.float32)),
                pl.Series("eval_oracle_risk", (1 / (1 + np.exp(-eta))).astype(np.float32)),
            )
        )
        f = shard_file(out, s)
        f.parent.mkdir(parents=True, exist_ok=True)
        df.write_parquet(f, compression="zstd", row_group_size=65_536)
    spec = {
        "spec_version": 1,
        "window_years": 3,
        "locf": True,
        "horizon_years": 3,
        "feature_names": names,
        "dtypes": {n: ("Enum" if n in cats else "Float32") for n in names},
        "categories": cats,
        "units": {},
        "raw_fields": [],
        "rollups": {},
    }
    (out / "feature_spec.json").write_text(json.dumps(spec))
    return out


def _overrides(rounds: int) -> list[str]:
    return [f"train.num_boost_round={rounds}", "train.early_stopping_rounds=1000000"]


def child(mode: str, features: str, rounds: int) -> None:
    """In a subprocess: train once (clinrisk out-of-core, or the in-memory baseline) and print JSON."""
    import numpy as np

    from clinrisk.config import load_config

    cfg = load_config(None, _overrides(rounds))
    t0 = time.perf_counter()
    info: dict[str, object] = {}
    if mode == "clinrisk":
        from clinrisk.train import train_model

        with tempfile.TemporaryDirectory() as tmp:
            res = train_model(cfg, Path(features), Path(tmp) / "bundle")
            info = {
                "n_train_rows": res["metadata"]["n_train_rows"],
                "n_features": len(res["metadata"]["feature_names"]),
                "trees": res["metadata"]["num_trees"],
                "val_auc": res["metrics"]["validation"].get("auc"),
            }
    else:
        import lightgbm as lgb
        import polars as pl

        from clinrisk.bundle import features_to_matrix
        from clinrisk.features import FeatureSpec
        from clinrisk.io import list_shards
        from clinrisk.train import lgb_params

        spec = FeatureSpec.from_json(Path(features) / "feature_spec.json")
        names = spec.feature_names
        cats = {n: spec.categories[n] for n in names if n in spec.categories}
        df = pl.read_parquet([str(f) for f in list_shards(Path(features))])
        out = {}
        for split in ("train", "validation"):
            part = df.filter(pl.col("split").cast(pl.String) == split)
            out[split] = (features_to_matrix(part, names, cats), part["label"].to_numpy())
        del df
        params = lgb_params(cfg, "binary")
        tr = lgb.Dataset(out["train"][0], out["train"][1], feature_name=names, categorical_feature=list(cats))
        va = lgb.Dataset(out["validation"][0], out["validation"][1], reference=tr)
        booster = lgb.train(params, tr, num_boost_round=rounds, valid_sets=[va])
        info = {
            "n_train_rows": int(out["train"][0].shape[0]),
            "n_features": len(names),
            "trees": booster.num_trees(),
        }
        _ = np.asarray(booster.predict(out["validation"][0][:10]))
    info["wall_s"] = round(time.perf_counter() - t0, 2)
    info["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(info))


def run(mode: str, features: Path, rounds: int) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", mode, "--features", str(features), "--rounds", str(rounds)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def scale(rows: int, n_features: int, rounds: int, factors: list[float], plot: Path | None = None) -> None:
    """Train at rows × each factor (fresh data each), fit peak RSS = fixed + slope × training rows."""
    import numpy as np

    points = []
    for k in factors:
        n = int(rows * k)
        with tempfile.TemporaryDirectory() as tmp:
            features = make_wide_features(Path(tmp) / "features", n, n_features)
            r = run("clinrisk", features, rounds)
        train_rows = int(r["n_train_rows"])  # type: ignore[call-overload]
        points.append((n, train_rows, float(r["wall_s"]), float(r["peak_rss_mb"])))  # type: ignore[arg-type]
        print(
            f"rows {n:>11,}  train rows {train_rows:>11,}  wall {r['wall_s']:>7} s  "
            f"train rows/s {train_rows / float(r['wall_s']):>10,.0f}  peak RSS {r['peak_rss_mb']:>8} MB",  # type: ignore[arg-type]
            flush=True,
        )
    x = np.array([p[1] for p in points], dtype=float)
    y = np.array([p[3] for p in points], dtype=float) * 2**20
    slope, fixed = np.polyfit(x, y, 1)
    share = points[-1][1] / points[-1][0]
    at = 200e6
    print(
        f"peak RSS = {fixed / 2**20:,.0f} MB + {slope:,.1f} bytes x training row "
        f"({n_features} features, {slope / n_features:.2f} bytes per row and feature); "
        f"a float32 matrix would be {4 * n_features} bytes a row"
    )
    print(
        f"extrapolated to 200M raw rows ({share:.0%} training rows): "
        f"{(fixed + slope * at * share) / 2**30:,.1f} GiB in one process"
    )
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(x / 1e6, y / 2**20, "o", label="measured peak RSS")
        grid = np.linspace(0, x.max() * 1.1, 50)
        ax.plot(
            grid / 1e6,
            (fixed + slope * grid) / 2**20,
            "-",
            label=f"{slope:.0f} B/row + {fixed / 2**20:.0f} MB",
        )
        ax.plot(
            grid / 1e6, (fixed + 4 * n_features * grid) / 2**20, ":", label="+ a float32 matrix (for scale)"
        )
        ax.set_xlabel("training rows (millions)")
        ax.set_ylabel("train peak RSS (MB)")
        ax.set_title(f"train step memory vs rows ({n_features} features, {rounds} rounds)")
        ax.legend()
        fig.tight_layout()
        plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=100)
        print(f"plot: {plot}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--features", type=Path, help="existing features dataset dir (else build a synthetic one)"
    )
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic dataset")
    ap.add_argument("--n-features", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=200, help="boosting rounds (early stopping disabled)")
    ap.add_argument("--compare-inmemory", action="store_true", help="also run the in-memory baseline")
    ap.add_argument("--scale", help="comma-separated row factors (e.g. 1,4): peak RSS against rows")
    ap.add_argument("--plot", type=Path, help="with --scale: write the peak-RSS-vs-rows plot (png) here")
    ap.add_argument("--child", choices=["clinrisk", "inmemory"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, str(args.features), args.rounds)
        return
    if args.scale:
        try:
            factors = sorted({float(f) for f in args.scale.split(",")})
        except ValueError:
            ap.error(f"--scale: expected comma-separated numbers, got {args.scale!r}")
        if len(factors) < 2 or factors[0] <= 0:
            ap.error("--scale: give at least two positive factors")
        scale(args.rows, args.n_features, args.rounds, factors, args.plot)
        return
    with tempfile.TemporaryDirectory() as tmp:
        features = args.features
        if features is None:
            t0 = time.perf_counter()
            features = make_wide_features(Path(tmp) / "features", args.rows, args.n_features)
            print(
                f"built synthetic features: {args.rows} rows x {args.n_features} in {time.perf_counter() - t0:.1f}s"
            )
        results = {"clinrisk": run("clinrisk", features, args.rounds)}
        if args.compare_inmemory:
            results["inmemory"] = run("inmemory", features, args.rounds)
        n = int(results["clinrisk"]["n_train_rows"])  # type: ignore[call-overload]
        p = int(results["clinrisk"]["n_features"])  # type: ignore[call-overload]
        print(json.dumps({"features": str(features), "rounds": args.rounds, **results}, indent=2))
        print(f"float32 training matrix would be {n * p * 4 / 2**20:.0f} MiB ({n} rows x {p} features)")
        if "inmemory" in results:
            c, m = results["clinrisk"], results["inmemory"]
            print(
                f"peak RSS clinrisk/in-memory = {float(c['peak_rss_mb']) / float(m['peak_rss_mb']):.2f}, "  # type: ignore[arg-type]
                f"wall = {float(c['wall_s']) / float(m['wall_s']):.2f}"  # type: ignore[arg-type]
            )


if __name__ == "__main__":
    main()
