"""The pipeline's scaling model (issue 20): per-step time and peak RSS against raw rows, fitted from
``bench_pipeline.py --json`` runs at several row counts, and extrapolated to a target (default 200M rows).

    .venv/bin/python benchmarks/bench_pipeline.py --json 2m.json
    .venv/bin/python benchmarks/bench_pipeline.py --set generate.n_patients=2000000 \\
        --set generate.n_shards=80 --json 20m.json
    .venv/bin/python benchmarks/scaling_model.py 2m.json 5m.json 10m.json 20m.json --plot docs/scaling-pipeline.png

Time per step is fitted as t = c · rows^b (least squares on log-log); b ≈ 1 is linear, b < 1 means a fixed
part (start-up, a fixed-size sample) still dominates. Peak RSS is fitted as m = m0 + k · rows: k ≈ 0 is
the flat memory the issue asks of every step. The printed ratios are the issue's goals: time at the largest
run ≤ 8× the smallest, and every step's peak RSS ≤ 1.3× its figure at the smallest run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

# A stage's time is the sum of its steps' spans (a fan-out's span: first task start to last task end, with
# run.workers tasks at a time); its memory is the largest task's peak RSS.
STAGES: dict[str, tuple[str, ...]] = {
    "generate + validate": (
        "plan-generation",
        "generate-shard",
        "validate-shard",
        "generate-validate-shard",
        "merge-data",
    ),
    "features": ("fit-feature-spec", "build-features-shard", "merge-features"),
    "select": ("select-features",),
    "train": ("train",),
    "evaluate": ("evaluate",),
    "register + tracking": ("start-tracking", "register", "finalize-tracking"),
}


def error(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def load_run(path: Path) -> dict[str, Any]:
    try:
        run = json.loads(path.read_text())
        steps = {s["step"]: s for s in run["steps"]}
        rows, wall, peak = int(run["rows"]), float(run["wall_s"]), float(run["peak_total_rss_mb"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        error(f"{path}: not a bench_pipeline.py --json summary ({exc})")
    stages: dict[str, dict[str, float]] = {}
    for stage, names in STAGES.items():
        parts = [steps[n] for n in names if n in steps]
        if not parts:
            continue
        stages[stage] = {
            "span_s": sum(p["span_s"] for p in parts),
            "busy_s": sum(p["busy_s"] for p in parts),
            "peak_mb": max(p["peak_rss_mb"] for p in parts),
        }
    return {"path": str(path), "rows": rows, "wall_s": wall, "peak_total_mb": peak, "stages": stages}


def power_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(c, b) of y = c · x^b by least squares on log-log."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-3)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    b = sum((a - mx) * (c - my) for a, c in zip(lx, ly, strict=True)) / sxx if sxx > 0 else 0.0
    return math.exp(my - b * mx), b


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(m0, k) of y = m0 + k · x by least squares."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((a - mx) ** 2 for a in xs)
    k = sum((a - mx) * (c - my) for a, c in zip(xs, ys, strict=True)) / sxx if sxx > 0 else 0.0
    return my - k * mx, k


def model(runs: list[dict[str, Any]], target_rows: float) -> list[dict[str, Any]]:
    rows = [float(r["rows"]) for r in runs]
    out = []
    names = [s for s in STAGES if all(s in r["stages"] for r in runs)]
    series = {
        s: ([r["stages"][s]["span_s"] for r in runs], [r["stages"][s]["peak_mb"] for r in runs])
        for s in names
    }
    series["total"] = ([r["wall_s"] for r in runs], [r["peak_total_mb"] for r in runs])
    for name, (times, mems) in series.items():
        c, b = power_fit(rows, times)
        m0, k = linear_fit(rows, mems)
        out.append(
            {
                "stage": name,
                "times": times,
                "mems": mems,
                "b": b,
                "time_ratio": times[-1] / times[0] if times[0] > 0 else math.nan,
                "mem_ratio": mems[-1] / mems[0] if mems[0] > 0 else math.nan,
                "mb_per_million_rows": k * 1e6,
                "target_s": c * target_rows**b,
                "target_mb": m0 + k * target_rows,
            }
        )
    return out


def plot(runs: list[dict[str, Any]], fits: list[dict[str, Any]], target_rows: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r["rows"] / 1e6 for r in runs]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for f in fits:
        (line,) = ax_t.plot(rows, f["times"], "o-", label=f"{f['stage']} (b={f['b']:.2f})")
        ax_t.plot([rows[-1], target_rows / 1e6], [f["times"][-1], f["target_s"]], ":", color=line.get_color())
        ax_m.plot(rows, f["mems"], "o-", color=line.get_color(), label=f["stage"])
    ax_t.set(xscale="log", yscale="log", xlabel="raw rows (millions)", ylabel="wall / span (s)")
    ax_t.set_title(
        f"time, with the power-law fit extrapolated to {target_rows / 1e6:.0f}M (dotted)", fontsize=9
    )
    ax_m.set(xscale="log", xlabel="raw rows (millions)", ylabel="peak RSS (MB)")
    ax_m.set_title("peak RSS: per step (largest task) and the whole process tree (total)", fontsize=9)
    ax_t.legend(fontsize=7)
    ax_m.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="bench_pipeline.py --json summaries (two or more)")
    ap.add_argument("--target-rows", type=float, default=200e6, help="extrapolate to this many raw rows")
    ap.add_argument("--plot", type=Path, default=None, help="write the time/memory plot here (PNG)")
    args = ap.parse_args()
    if len(args.runs) < 2:
        error("runs: need at least two summaries at different row counts")
    if not args.target_rows > 0:
        error(f"--target-rows: must be > 0, got {args.target_rows:g}")
    runs = sorted((load_run(p) for p in args.runs), key=lambda r: r["rows"])
    if len({r["rows"] for r in runs}) < 2:
        error("runs: all summaries have the same row count")
    fits = model(runs, args.target_rows)
    print(
        "runs: "
        + ", ".join(f"{r['rows'] / 1e6:.2f}M rows {r['wall_s']:.1f} s ({Path(r['path']).name})" for r in runs)
    )
    head = "  ".join(f"{r['rows'] / 1e6:>6.1f}M" for r in runs)
    print(
        f"{'stage':<22} time (s) at {head}   b    ratio  | peak MB at {head}  ratio  MB/M rows | at {args.target_rows / 1e6:.0f}M"
    )
    for f in fits:
        ts = "  ".join(f"{t:>7.1f}" for t in f["times"])
        ms = "  ".join(f"{m:>7.0f}" for m in f["mems"])
        print(
            f"{f['stage']:<22} {ts}  {f['b']:>5.2f} {f['time_ratio']:>6.2f}  | {ms}  {f['mem_ratio']:>5.2f}"
            f"  {f['mb_per_million_rows']:>8.1f}  | {f['target_s']:>8.0f} s {f['target_mb']:>7.0f} MB"
        )
    total = next(f for f in fits if f["stage"] == "total")
    worst = max((f for f in fits if f["stage"] != "total"), key=lambda f: f["mem_ratio"])
    x = runs[-1]["rows"] / runs[0]["rows"]
    print(
        f"goal: time at {x:.1f}x the rows <= 8x: {total['time_ratio']:.2f}x (ratio to goal {total['time_ratio'] / 8:.2f}); "
        f"every step's peak RSS <= 1.3x: worst {worst['stage']} {worst['mem_ratio']:.2f}x "
        f"(ratio to goal {worst['mem_ratio'] / 1.3:.2f})"
    )
    if args.plot:
        plot(runs, fits, args.target_rows, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
