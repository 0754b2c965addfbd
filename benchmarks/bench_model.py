"""Training + evaluation benchmark on a finished pipeline run: wall time and peak RSS of each stage, and
model quality against the oracle ceiling (docs/science.md §1.9).

    make run                                                   # the default 2M-row run, once
    .venv/bin/python benchmarks/bench_model.py --run outputs/default/latest
    .venv/bin/python benchmarks/bench_model.py --run outputs/tiny/latest --repeat 3   # quick

Reads the run's effective config, feature shards and selection artifact; each stage runs in a fresh
subprocess (so its peak RSS, ``ru_maxrss``, is its own) writing into a temp dir — the run is not touched.
Goal (issue #4): true-label AUC within 0.04 of the oracle's expected AUC.
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

ROOT = Path(__file__).resolve().parents[1]
AUC_GAP_GOAL = 0.04


def child(stage: str, run: Path, work: Path) -> None:
    """One stage in this (fresh) process; prints a JSON line with what it measured."""
    sys.path.insert(0, str(ROOT))
    from clinrisk.steps import evaluate_step, train_step

    config_dir = run / "resolve-config" / "config"
    features = run / "merge-features" / "features"
    t0 = time.perf_counter()
    if stage == "train":
        train_step(config_dir, features, run / "select-features" / "selection", "", work / "bundle")
        out: dict[str, object] = {}
    else:
        result = evaluate_step(config_dir, work / "bundle", features, "", work / "evaluation", work / "r.md")
        out = {"headline": result["headline"]}
    out["wall_s"] = time.perf_counter() - t0
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def run_stage(stage: str, run: Path, work: Path) -> dict[str, object]:
    """Run ``stage`` in a subprocess and parse its RESULT line (its output otherwise goes to stderr)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", stage, "--run", str(run), "--work", str(work)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{stage} failed (exit {proc.returncode})")
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run", type=Path, required=True, help="a pipeline run dir (e.g. outputs/default/latest)"
    )
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--child", choices=["train", "evaluate"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    run = args.run.resolve()
    if args.child:
        child(args.child, run, args.work)
        return
    for part in ("resolve-config/config", "merge-features/features", "select-features/selection"):
        if not (run / part).exists():
            ap.error(f"--run {args.run}: {part} not found (is this a finished pipeline run directory?)")
    if args.repeat < 1:
        ap.error("--repeat: must be >= 1")

    walls: dict[str, list[float]] = {"train": [], "evaluate": []}
    rss: dict[str, list[float]] = {"train": [], "evaluate": []}
    headline: dict[str, float] = {}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="clinrisk-bench-model-") as tmp:
            for stage in ("train", "evaluate"):
                res = run_stage(stage, run, Path(tmp))
                walls[stage].append(float(res["wall_s"]))  # type: ignore[arg-type]
                rss[stage].append(float(res["rss_mb"]))  # type: ignore[arg-type]
                if stage == "evaluate":
                    headline = dict(res["headline"])  # type: ignore[call-overload]

    cfg_text = (run / "resolve-config" / "config" / "config.yaml").read_text()
    print(f"run: {run}  repeats: {args.repeat}")
    print(f"{'stage':10s} {'median s':>9s} {'min s':>7s} {'peak RSS MB':>12s}")
    for stage in ("train", "evaluate"):
        print(
            f"{stage:10s} {statistics.median(walls[stage]):9.1f} {min(walls[stage]):7.1f} "
            f"{max(rss[stage]):12.0f}"
        )
    total = statistics.median(walls["train"]) + statistics.median(walls["evaluate"])
    print(f"train + evaluate: {total:.1f} s (medians)")
    auc, oracle = headline.get("true_auc"), headline.get("expected_auc_oracle")
    expected = headline.get("expected_auc_model")
    if auc is not None and oracle is not None:
        gap = oracle - auc
        verdict = "met" if gap <= AUC_GAP_GOAL else "NOT met"
        print(
            f"true-label AUC {auc:.4f}  model expected AUC {expected:.4f}  oracle expected AUC {oracle:.4f}  "
            f"gap {gap:.4f} (goal <= {AUC_GAP_GOAL}: {verdict})"
        )
    for key in ("true_ap", "true_brier", "oracle_brier", "excess_brier", "recorded_auc", "recorded_ap"):
        if key in headline:
            print(f"{key:14s} {headline[key]:.4f}")
    strategy = next((ln.split(":", 1)[1].strip() for ln in cfg_text.splitlines() if "strategy:" in ln), "?")
    print(f"label strategy: {strategy}")


if __name__ == "__main__":
    main()
