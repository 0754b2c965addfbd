"""benchmarks/scaling_model.py: the issue-20 scaling model fitted from bench_pipeline.py summaries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scaling_model.py"
STEPS = ("plan-generation", "generate-shard", "validate-shard", "merge-data", "fit-feature-spec",
         "build-features-shard", "merge-features", "select-features", "train", "evaluate")  # fmt: skip


def _summary(path: Path, rows: int) -> Path:
    """A bench_pipeline --json summary where each step takes rows^0.8 / 1e4 s (select a fixed 10 s) and
    features' memory grows 5 MB per million rows."""
    steps = [
        {
            "step": name,
            "tasks": 1,
            "start_s": 0.0,
            "span_s": 10.0 if name == "select-features" else rows**0.8 / 1e4,
            "busy_s": 1.0,
            "peak_rss_mb": 500 + (5 * rows / 1e6 if name == "build-features-shard" else 0),
        }
        for name in STEPS
    ]
    wall = sum(s["span_s"] for s in steps)
    path.write_text(json.dumps({"rows": rows, "wall_s": wall, "peak_total_rss_mb": 1200, "steps": steps}))
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_fits_exponents_memory_slopes_and_the_goals(tmp_path: Path) -> None:
    runs = [_summary(tmp_path / f"{m}m.json", m * 1_000_000) for m in (2, 5, 10, 20)]
    proc = _run(*runs, "--plot", tmp_path / "plot.png")
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split("  ")[0].strip(): ln for ln in proc.stdout.splitlines()}
    assert " 0.80 " in lines["generate + validate"] and " 0.00 " in lines["select"]
    assert "5.0  |" in lines["features"]  # MB per million rows
    assert "every step's peak RSS <= 1.3x: worst features 1.18x" in proc.stdout
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_bad_input_is_one_error_line(tmp_path: Path) -> None:
    one = _summary(tmp_path / "a.json", 2_000_000)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    for args, msg in (
        ((one,), "error: runs: need at least two summaries"),
        ((one, bad), f"error: {bad}: not a bench_pipeline.py --json summary"),
        ((one, one), "error: runs: all summaries have the same row count"),
        ((one, tmp_path / "missing.json"), "not a bench_pipeline.py --json summary"),
    ):
        proc = _run(*args)
        assert proc.returncode == 2 and msg in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
