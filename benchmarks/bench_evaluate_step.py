"""The evaluate step alone on a finished run: wall and peak RSS per ``evaluate.workers`` and source tree.

Each measurement is a fresh ``python -m clinrisk evaluate`` on the run's bundle and features (the pipeline's
evaluate task does the same work), sampled as a process tree (the step plus its bootstrap workers). Arms are
interleaved (tree A workers 1, tree A workers 2, tree B ..., then again) so load on a shared machine hits
them alike. Prints every run, the medians, the ratios to the first arm, and whether every arm wrote the same
``metrics.json`` as the first one (the evaluation must not depend on the number of workers).

    .venv/bin/python benchmarks/bench_evaluate_step.py --pipeline-dir outputs/default/latest --workers 1,2
    # before/after a change: one checkout per commit (git worktree add /tmp/wt-a <commit>)
    .venv/bin/python benchmarks/bench_evaluate_step.py --pipeline-dir <run> --tree /tmp/wt-a --tree . --workers 0
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def tree_rss_mb(proc: psutil.Process) -> float:
    """RSS of ``proc`` and every live descendant, in MB."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


def run_step(tree: Path, run: Path, out: Path, workers: int) -> tuple[float, float]:
    """One fresh evaluate process: (wall s, peak tree RSS MB)."""
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}"}
    cmd = [sys.executable, "-m", "clinrisk", "evaluate"]
    if workers:  # 0: the tree's default (a tree from before evaluate.workers has no such key)
        cmd += ["--set", f"evaluate.workers={workers}"]
    cmd += ["--bundle", str(run / "train" / "bundle"), "--features", str(run / "merge-features" / "features")]
    cmd += ["--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    me, peak = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, tree_rss_mb(me))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"error: evaluate ({tree}, workers={workers}) failed: {err.strip()[-1500:]}")
    return wall, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline-dir", type=Path, default=None, help="default: the newest run under outputs/")
    ap.add_argument(
        "--workers", default="1,2", help="evaluate.workers settings, comma-separated; 0 = the tree's default"
    )
    ap.add_argument("--tree", type=Path, action="append", default=[], help="source tree (default: this one)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    newest = sorted(ROOT.glob("outputs/*/runs/*/clinrisk-training-*"), key=lambda p: p.stat().st_mtime)
    run = args.pipeline_dir or (newest[-1] if newest else None)
    if run is None or not (run / "train" / "bundle").is_dir() or not (run / "merge-features").is_dir():
        ap.error(
            f"--pipeline-dir: {run} is not a finished training run (run `make run` or bench_pipeline.py)"
        )
    try:
        settings = [int(w) for w in args.workers.split(",")]
    except ValueError:
        ap.error("--workers: comma-separated whole numbers")
    if any(w < 0 for w in settings) or args.repeat < 1:
        ap.error("--workers: each must be >= 0; --repeat: >= 1")
    trees = [t.resolve() for t in args.tree] or [ROOT]
    arms = [(t, w) for t in trees for w in settings]
    walls: dict[tuple[Path, int], list[float]] = {a: [] for a in arms}
    peaks: dict[tuple[Path, int], list[float]] = {a: [] for a in arms}
    same: dict[tuple[Path, int], bool] = {a: True for a in arms}
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-step-") as tmp:
        for i in range(args.repeat):
            for k, (tree, w) in enumerate(arms):
                out = Path(tmp) / f"{k}-{i}"
                wall, peak = run_step(tree, run, out, w)
                walls[(tree, w)].append(wall)
                peaks[(tree, w)].append(peak)
                first = Path(tmp) / f"0-{i}" / "metrics.json"
                same[(tree, w)] &= filecmp.cmp(out / "metrics.json", first, shallow=False)
                print(f"run {i + 1} {tree.name} workers={w}: {wall:6.1f} s, peak {peak:6.0f} MB", flush=True)
    base = arms[0]
    w0, m0 = statistics.median(walls[base]), statistics.median(peaks[base])
    print(f"evaluate on {run}: medians of {args.repeat} interleaved fresh process(es)")
    print(
        f"{'tree':<16} {'workers':>7} {'wall s':>7} {'peak MB':>8} {'wall ratio':>11} {'peak ratio':>11}  same metrics"
    )
    for tree, w in arms:
        wall, peak = statistics.median(walls[(tree, w)]), statistics.median(peaks[(tree, w)])
        print(
            f"{tree.name[:16]:<16} {w:>7} {wall:7.1f} {peak:8.0f} {wall / w0:11.2f} {peak / m0:11.2f}  "
            f"{'yes' if same[(tree, w)] else 'NO'}"
        )


if __name__ == "__main__":
    main()
