"""Pipeline benchmark: wall time, peak RSS and rows/s of the whole local pipeline (kfp.local,
SubprocessRunner), per step and in total, with ratios to issue 20's goals at the default 2M rows on 2 cores:
whole pipeline ≤ 60 s and ≤ 1.5 GB; generate + validate ≥ 200k rows/s; features ≥ 150k rows/s.

    .venv/bin/python benchmarks/bench_pipeline.py                                  # configs/default.yaml
    .venv/bin/python benchmarks/bench_pipeline.py --config configs/tiny.yaml       # quick
    .venv/bin/python benchmarks/bench_pipeline.py --set generate.n_patients=100000 --json out.json
    .venv/bin/python benchmarks/bench_pipeline.py --repeat 3                         # medians of 3

Every KFP task runs as its own ``python -m kfp.dsl.executor_main`` subprocess whose ``--executor_input``
names the task's output directory; a sampler thread walks this process's tree every ``--interval`` seconds
and attributes RSS and first/last-seen times to tasks. Per-step wall = last seen - first seen (summed over
ParallelFor iterations, with the span of the fan-out too); per-step peak RSS = the largest RSS of one task
process tree; total peak = the largest sum over the whole tree at one instant (what the machine must hold).
Sampling misses tasks shorter than the interval; they show as ``<interval``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The executor input carries each output's URI: <pipeline_root>/<pipeline-run>/<task-name>/<output-name>.
OUTPUT_FILE_RE = re.compile(r'"outputFile":\s*"[^"]*/(?P<task>[^/"]+)/executor_output\.json"')


@dataclass
class TaskSample:
    """What the sampler saw of one task process (one ParallelFor iteration is one task)."""

    name: str
    first: float
    last: float
    peak_rss: int = 0


@dataclass
class TreeSampler:
    """Samples this process's subprocess tree; maps executor processes to KFP task names."""

    interval: float
    tasks: dict[int, TaskSample] = field(default_factory=dict)
    peak_total_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _task_of(self, proc: Any) -> str | None:
        try:
            cmd = " ".join(proc.cmdline())
        except Exception:  # process ended between listing and reading
            return None
        if "executor_main" not in cmd:
            return None
        m = OUTPUT_FILE_RE.search(cmd.replace('\\"', '"'))
        return m["task"] if m else "unknown-task"

    def sample_once(self) -> None:
        import psutil

        now = time.perf_counter()
        me = psutil.Process()
        total = 0
        owner: dict[int, str] = {}  # pid -> task, for every executor process (wrappers included)
        procs: list[tuple[Any, int, int]] = []
        for proc in me.children(recursive=True):
            try:
                rss, parent = proc.memory_info().rss, proc.ppid()
            except psutil.Error:
                continue
            total += rss
            task = self._task_of(proc)
            if task is not None:
                owner[proc.pid] = task
                procs.append((proc, parent, rss))
        for proc, parent, rss in procs:
            task = owner[proc.pid]
            if owner.get(parent) == task:
                continue  # the runner's wrapper and the executor: count the outermost once
            tree = rss
            with contextlib.suppress(psutil.Error):
                tree += sum(c.memory_info().rss for c in proc.children(recursive=True))
            seen = self.tasks.get(proc.pid)
            if seen is None:
                self.tasks[proc.pid] = TaskSample(task, now, now, tree)
            else:
                seen.last = now
                seen.peak_rss = max(seen.peak_rss, tree)
        self.peak_total_rss = max(self.peak_total_rss, total + me.memory_info().rss)

    def run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()


STEP_RE = re.compile(r"-\d+$")  # iteration suffixes, if the runner adds them


def summarise(sampler: TreeSampler, wall: float) -> dict[str, Any]:
    """Per step: number of task processes, summed busy time, span (first start → last end), peak RSS."""
    steps: dict[str, dict[str, Any]] = {}
    for t in sampler.tasks.values():
        step = STEP_RE.sub("", t.name)
        s = steps.setdefault(
            step, {"tasks": 0, "busy_s": 0.0, "start": t.first, "end": t.last, "peak_rss": 0}
        )
        s["tasks"] += 1
        s["busy_s"] += t.last - t.first
        s["start"] = min(s["start"], t.first)
        s["end"] = max(s["end"], t.last)
        s["peak_rss"] = max(s["peak_rss"], t.peak_rss)
    t0 = min((s["start"] for s in steps.values()), default=0.0)
    rows = [
        {
            "step": name,
            "tasks": s["tasks"],
            "start_s": round(s["start"] - t0, 1),
            "span_s": round(s["end"] - s["start"], 1),
            "busy_s": round(s["busy_s"], 1),
            "peak_rss_mb": round(s["peak_rss"] / 2**20),
        }
        for name, s in sorted(steps.items(), key=lambda kv: kv[1]["start"])
    ]
    return {
        "wall_s": round(wall, 1),
        "peak_total_rss_mb": round(sampler.peak_total_rss / 2**20),
        "steps": rows,
    }


def measure_once(config: Path, overrides: list[str], interval: float) -> dict[str, Any]:
    """One pipeline run under the sampler; its per-step summary."""
    from clinrisk.pipeline_runner import run_local

    sampler = TreeSampler(interval)
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        result = run_local(config, overrides)
    finally:
        sampler.stop()
        thread.join()
    summary = summarise(sampler, time.perf_counter() - t0)
    summary["pipeline_dir"] = str(result.pipeline_dir)
    summary["rows"] = raw_rows(Path(result.pipeline_dir))
    return summary


def raw_rows(pipeline_dir: Path) -> int | None:
    """Raw patient-year rows of the run (the generated manifest), the denominator of every rows/s."""
    manifest = pipeline_dir / "merge-data" / "raw" / "manifest.json"
    if not manifest.is_file():
        return None
    rows = json.loads(manifest.read_text()).get("rows")
    return int(rows) if isinstance(rows, int) else None


# Throughput goals (rows/s over the span of a group of steps): issue 20.
STAGE_GOALS = {
    "generate + validate": (("generate-shard", "validate-shard", "generate-validate-shard"), 200_000.0),
    "features": (("fit-feature-spec", "build-features-shard", "merge-features"), 150_000.0),
}


def stage_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Per goal stage: span from its first step's start to its last step's end, rows/s, ratio to the goal."""
    by_step = {r["step"]: r for r in run["steps"]}
    out = []
    for name, (steps, goal) in STAGE_GOALS.items():
        rows = [by_step[s] for s in steps if s in by_step]
        if not rows or not run.get("rows"):
            continue
        start = min(r["start_s"] for r in rows)
        span = max(r["start_s"] + r["span_s"] for r in rows) - start
        rate = run["rows"] / span if span > 0 else float("inf")
        peak = max(r["peak_rss_mb"] for r in rows)
        out.append(
            {
                "stage": name,
                "span_s": round(span, 1),
                "rows_per_s": round(rate),
                "goal": goal,
                "ratio": round(rate / goal, 2),
                "peak_rss_mb": peak,
            }
        )
    return out


def median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats: total wall, per-step span and busy time; peaks are the maximum seen."""
    steps: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for row in run["steps"]:
            steps.setdefault(row["step"], []).append(row)
    rows = [
        {
            "step": name,
            "tasks": max(r["tasks"] for r in rs),
            "start_s": round(statistics.median(r["start_s"] for r in rs), 1),
            "span_s": round(statistics.median(r["span_s"] for r in rs), 1),
            "busy_s": round(statistics.median(r["busy_s"] for r in rs), 1),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        }
        for name, rs in sorted(steps.items(), key=lambda kv: statistics.median(r["start_s"] for r in kv[1]))
    ]
    return {
        "rows": runs[0].get("rows"),
        "repeats": len(runs),
        "wall_s": round(statistics.median(r["wall_s"] for r in runs), 1),
        "wall_s_each": [r["wall_s"] for r in runs],
        "peak_total_rss_mb": max(r["peak_total_rss_mb"] for r in runs),
        "steps": rows,
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    ap.add_argument("--repeat", type=int, default=1, help="pipeline runs; medians are printed")
    ap.add_argument("--interval", type=float, default=0.25, help="sampling interval in seconds")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    ap.add_argument("--goal-s", type=float, default=60.0)
    ap.add_argument("--goal-gb", type=float, default=1.5)
    args = ap.parse_args()
    if args.interval <= 0:
        ap.error("--interval: must be > 0")
    if args.repeat < 1:
        ap.error("--repeat: must be >= 1")

    summary = median_summary(
        [measure_once(args.config, args.overrides, args.interval) for _ in range(args.repeat)]
    )
    summary["config"] = str(args.config)
    summary["overrides"] = args.overrides

    print(f"medians over {summary['repeats']} run(s); walls {summary['wall_s_each']} s")
    print(f"{'step':24s} {'tasks':>5s} {'start s':>8s} {'span s':>8s} {'busy s':>8s} {'peak MB':>8s}")
    for r in summary["steps"]:
        span = f"{r['span_s']:.1f}" if r["span_s"] >= args.interval else f"<{args.interval}"
        print(
            f"{r['step']:24s} {r['tasks']:5d} {r['start_s']:8.1f} {span:>8s} {r['busy_s']:8.1f} "
            f"{r['peak_rss_mb']:8d}"
        )
    rows = summary.get("rows")
    if rows:
        print(f"rows/s per step below use the run's {rows:,} raw patient-year rows")
        print(f"{'step':24s} {'rows/s':>10s}")
        for r in summary["steps"]:
            if r["span_s"] >= args.interval:
                print(f"{r['step']:24s} {rows / r['span_s']:10,.0f}")
        summary["stages"] = stage_rows(summary)
        print(
            f"{'goal stage':24s} {'span s':>8s} {'rows/s':>10s} {'goal':>10s} {'ratio':>6s} {'peak MB':>8s}"
        )
        for st in summary["stages"]:
            print(
                f"{st['stage']:24s} {st['span_s']:8.1f} {st['rows_per_s']:10,d} {st['goal']:10,.0f} "
                f"{st['ratio']:6.2f} {st['peak_rss_mb']:8d}"
            )
    gb = summary["peak_total_rss_mb"] / 1024
    wall = summary["wall_s"]
    print(
        f"total wall (median) {wall:.1f} s (goal {args.goal_s:.0f} s, ratio {wall / args.goal_s:.2f}); "
        f"peak RSS of the whole tree {gb:.2f} GB (goal {args.goal_gb:.1f} GB, ratio {gb / args.goal_gb:.2f})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
