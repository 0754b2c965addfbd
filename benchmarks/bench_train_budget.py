"""``train.max_rows``: what the training-row budget costs in test quality and saves in memory (issue 20).

Trains the train stage (:func:`clinrisk.train.train_model`) on one features dataset once per budget and seed,
each in a fresh process (peak RSS = that process's ``ru_maxrss``), then scores the test split with each
bundle and prints, per budget, the training rows used, wall, peak RSS and test AUC / AP against the
generator's true labels and the recorded labels: medians over the seeds (``run.seed`` seeds the row draw
and LightGBM), and each budget's AUC difference to the unbudgeted model of the same seed.

    .venv/bin/python benchmarks/bench_train_budget.py --features <run>/merge-features/features \\
        --selected <run>/select-features/selection/selected_features.json --budgets none,1000000,500000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_once(features: Path, selected: Path | None, budget: str, seed: int, out: Path) -> dict[str, Any]:
    """Fit one bundle in this process; its wall and this process's peak RSS."""
    from clinrisk.config import load_config
    from clinrisk.selection import features_for_training
    from clinrisk.train import train_model

    names = features_for_training(selected) if selected else None  # what the pipeline's train step uses
    cfg = load_config(None, [f"train.max_rows={'null' if budget == 'none' else budget}", f"run.seed={seed}"])
    t0 = time.perf_counter()
    res = train_model(cfg, features, out, names)
    wall = time.perf_counter() - t0
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "n_train_rows": res["metadata"]["n_train_rows"],
        "n_train_rows_available": res["metadata"]["n_train_rows_available"],
        "num_trees": res["metadata"]["num_trees"],
    }


def scores_on_test_split(features: Path, bundle_dir: Path) -> dict[str, float]:
    """Test AUC and AP of a bundle against true and recorded labels (scored one shard at a time)."""
    from clinrisk import metrics as M
    from clinrisk.bundle import load_bundle
    from clinrisk.config import load_config
    from clinrisk.evaluate import score_split

    scored = score_split(features, load_bundle(bundle_dir), load_config(None, []).evaluate)
    out = {}
    for name, col in (("true", "eval_label_true"), ("recorded", "label_rec")):
        y = scored.frame[col].cast(float).to_numpy()
        out[f"auc_{name}"] = round(M.roc_auc(y, scored.p), 5)
        out[f"ap_{name}"] = round(M.average_precision(y, scored.p), 5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--features", type=Path, required=True, help="a features dataset (a run's merge-features)"
    )
    ap.add_argument("--selected", type=Path, default=None, help="selected_features.json (as the pipeline)")
    ap.add_argument("--budgets", default="none,1000000,500000", help="comma list of row budgets; none = all")
    ap.add_argument("--seeds", default="20261123,1,2", help="comma list of run.seed values")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--one", nargs=3, metavar=("BUDGET", "SEED", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        budget, seed, out = args.one
        print(json.dumps(train_once(args.features, args.selected, budget, int(seed), Path(out))))
        return
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    for b in budgets:
        if b != "none" and not b.isdigit():
            ap.error(f"--budgets: {b!r} is not a row count or none")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error("--seeds: expected a comma list of integers")

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for budget in budgets:
                out = Path(tmp) / f"{budget}-{seed}"
                cmd = [sys.executable, __file__, "--features", str(args.features)]
                if args.selected:
                    cmd += ["--selected", str(args.selected)]
                cmd += ["--one", budget, str(seed), str(out)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    sys.exit(
                        f"error: training with budget {budget}, seed {seed} failed:\n{done.stderr[-2000:]}"
                    )
                row = {"budget": budget, "seed": seed, **json.loads(done.stdout.strip().splitlines()[-1])}
                row.update(scores_on_test_split(args.features, out))
                results.append(row)
                print(json.dumps(row), flush=True)

    base = {r["seed"]: r for r in results if r["budget"] == "none"}
    print(
        f"\n{'budget':>10s} {'rows':>10s} {'wall s':>7s} {'peak MB':>8s} {'AUC true':>9s} {'ΔAUC':>8s} "
        f"{'AP true':>8s} {'AUC rec':>8s}   (medians over {len(seeds)} seeds)"
    )
    for budget in budgets:
        rs = [r for r in results if r["budget"] == budget]

        def med(key: str, rows: list[dict[str, Any]] = rs) -> float:
            return float(statistics.median(r[key] for r in rows))

        delta = (
            f"{statistics.median(r['auc_true'] - base[r['seed']]['auc_true'] for r in rs):+.5f}"
            if base and all(r["seed"] in base for r in rs)
            else "n/a"
        )
        print(
            f"{budget:>10s} {med('n_train_rows'):10,.0f} {med('wall_s'):7.1f} {med('peak_rss_mb'):8.0f} "
            f"{med('auc_true'):9.5f} {delta:>8s} {med('ap_true'):8.5f} {med('auc_recorded'):8.5f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
