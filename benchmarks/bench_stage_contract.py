"""Interleaved A/B wall time of the tiny pipeline on two source trees (issue 15: the stage contract may cost
at most 10 % wall).

Each tree is a checkout (e.g. ``git worktree add /tmp/wt-before <commit>``); both run with THIS interpreter
(the same locked dependencies), its ``src`` and root put first on ``PYTHONPATH`` so the tree's own
``clinrisk``, ``components`` and ``pipelines`` are the ones imported (an editable install's finder comes
after ``sys.path``). Runs alternate A, B, A, B, ... so load on a shared machine hits both arms alike; the
script prints every run, then the medians and the ratio B/A, and checks that both arms trained the same
model (``model.txt`` bytes) and report the same test metrics.

    python benchmarks/bench_stage_contract.py --before /tmp/wt-before --after /tmp/wt-after --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(tree: Path, config: str, out: Path, extra: list[str]) -> tuple[float, Path]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}"}
    cmd = [sys.executable, "-m", "clinrisk", "pipeline", "run", "--config", config]
    cmd += ["--set", f"run.output_dir={out}", *(a for s in extra for a in ("--set", s))]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"error: {tree}: pipeline run failed (exit {res.returncode}): {res.stderr.strip()[-800:]}")
    return wall, out


def outputs(out: Path) -> dict[str, str]:
    """The trained model's sha256 and the test headline of a finished run (read from its pipeline folder)."""
    # train/ and evaluate/, or the local runner's one model task (pipeline.fuse_local_steps)
    model = sorted(out.rglob("bundle/model.txt"))
    metrics = sorted(out.rglob("evaluation/metrics.json"))
    if not model or not metrics:
        return {"model_sha256": "?", "headline": "?", "data_hash": "?"}
    headline = json.loads(metrics[-1].read_text()).get("headline", {})
    metadata = json.loads((model[-1].parent / "metadata.json").read_text())
    return {
        "model_sha256": hashlib.sha256(model[-1].read_bytes()).hexdigest()[:16],
        "headline": json.dumps(headline, sort_keys=True),
        "data_hash": str(metadata.get("data_hash", "?"))[:16],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="source tree A (the baseline)")
    ap.add_argument("--after", type=Path, required=True, help="source tree B")
    ap.add_argument("--config", default="configs/clinical/tiny.yaml", help="config, relative to each tree")
    ap.add_argument("--repeats", type=int, default=3, help="runs per arm, interleaved")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra config override")
    args = ap.parse_args()
    walls: dict[str, list[float]] = {"before": [], "after": []}
    seen: dict[str, set[str]] = {"model": set(), "headline": set(), "data_hash": set()}
    with tempfile.TemporaryDirectory(prefix="bench-stage-contract-") as tmp:
        for i in range(args.repeats):
            for arm, tree in (("before", args.before), ("after", args.after)):
                wall, out = run_once(tree.resolve(), args.config, Path(tmp) / f"{arm}-{i}", args.sets)
                got = outputs(out)
                seen["model"].add(got["model_sha256"])
                seen["headline"].add(got["headline"])
                seen["data_hash"].add(got["data_hash"])
                walls[arm].append(wall)
                print(
                    f"run {i + 1} {arm:<6} {wall:7.1f} s  model {got['model_sha256']}  "
                    f"data hash {got['data_hash']}",
                    flush=True,
                )
    med = {arm: statistics.median(w) for arm, w in walls.items()}
    print(
        f"median before {med['before']:.1f} s, after {med['after']:.1f} s, "
        f"ratio after/before {med['after'] / med['before']:.3f} ({args.repeats} runs each, interleaved)"
    )
    same = all(len(v) == 1 for v in seen.values())
    print(f"same model bytes, data hash and test metrics in every run: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
