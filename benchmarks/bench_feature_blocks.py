"""Feature shards built in blocks of whole patients: time and peak RSS per ``features.block_rows`` (issue 20).

Each measurement is a fresh process that runs the pipeline's feature step (``clinrisk.steps``) on the shards
of one task group of a finished run, as a ``build-features-shard`` task does, with ``features.block_rows``
set; it prints the wall time and ``ru_maxrss``. Every setting's outputs (shards, unit quarantine,
summaries) are compared byte for byte with the whole build (``block_rows`` 0). Prints medians over
``--repeat`` and the ratios to the whole build.

    .venv/bin/python benchmarks/bench_feature_blocks.py --pipeline-dir outputs/default/latest --repeat 3
"""

from __future__ import annotations

import argparse
import filecmp
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One task group's shards, in a fresh interpreter: "<wall s> <maxrss MB>" on stdout.
_TASK = """
import resource, sys, time
from pathlib import Path
from clinrisk.steps import build_features_shard_step
config, run, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
t0 = time.perf_counter()
for s in [int(s) for s in sys.argv[4].split(",")]:
    build_features_shard_step(config, run / "fit-feature-spec/feature_spec", run / "merge-data/validated",
                              run / "merge-data/raw", s, out / f"part-{s:03d}")
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _config_dir(run: Path, rows: int, tmp: Path) -> Path:
    """The run's resolved config with ``features.block_rows`` set, in a folder of its own."""
    import yaml

    doc = yaml.safe_load((run / "resolve-config" / "config" / "config.yaml").read_text())
    doc.setdefault("features", {})["block_rows"] = rows
    out = tmp / f"config-{rows}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def _task(config: Path, run: Path, out: Path, rows: int, shards: list[int]) -> tuple[float, float]:
    done = subprocess.run(
        [sys.executable, "-c", _TASK, str(config), str(run), str(out), ",".join(map(str, shards))],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(f"error: feature task (block_rows={rows}) failed: {done.stderr.strip()[-2000:]}")
    wall, rss = done.stdout.split()[-2:]
    return float(wall), float(rss)


def _same_files(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if files != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline-dir", type=Path, default=None, help="default: the newest run under outputs/")
    ap.add_argument("--shards", default="0,1,2,3", help="the task group's shards (default: 0,1,2,3)")
    ap.add_argument("--block-rows", default="0,200000,131072,65536", help="settings to compare; 0 = whole")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    newest = sorted(ROOT.glob("outputs/*/runs/*/clinrisk-training-*"), key=lambda p: p.stat().st_mtime)
    run = args.pipeline_dir or (newest[-1] if newest else None)
    if (
        run is None
        or not (run / "merge-data" / "validated").is_dir()
        or not (run / "fit-feature-spec").is_dir()
    ):
        ap.error(
            f"--pipeline-dir: {run} is not a finished training run (run `make run` or bench_pipeline.py first)"
        )
    try:
        shards = [int(s) for s in args.shards.split(",")]
        settings = [int(r) for r in args.block_rows.split(",")]
    except ValueError:
        ap.error("--shards, --block-rows: comma-separated whole numbers")
    if 0 not in settings:
        settings = [0, *settings]
    with tempfile.TemporaryDirectory(prefix="bench-feature-blocks-") as tmp:
        results: dict[int, tuple[float, float, bool]] = {}
        for rows in settings:
            config = _config_dir(run, rows, Path(tmp))
            runs = [_task(config, run, Path(tmp) / f"{rows}-{i}", rows, shards) for i in range(args.repeat)]
            same = _same_files(Path(tmp) / f"{rows}-0", Path(tmp) / "0-0") if rows else True
            results[rows] = (
                statistics.median(w for w, _ in runs),
                statistics.median(m for _, m in runs),
                same,
            )
    wall0, rss0, _ = results[0]
    print(f"shards {shards} in one task, medians of {args.repeat} fresh process(es)")
    print(
        f"{'block_rows':>12} {'wall s':>8} {'peak MB':>8} {'wall ratio':>11} {'peak ratio':>11}  same bytes"
    )
    for rows, (wall, rss, same) in results.items():
        name = "whole" if rows == 0 else f"{rows:,}"
        print(
            f"{name:>12} {wall:8.1f} {rss:8.0f} {wall / wall0:11.2f} {rss / rss0:11.2f}  {'yes' if same else 'NO'}"
        )


if __name__ == "__main__":
    main()
