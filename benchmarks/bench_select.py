"""Feature-selection benchmark: wall time and peak RSS of ``clinrisk.selection.select_features``.

    .venv/bin/python benchmarks/bench_select.py outputs/default/features
    .venv/bin/python benchmarks/bench_select.py /tmp/selbench --synthetic-patients 50000 --set select.rounds=5

The step runs in a fresh subprocess so ``ru_maxrss`` is its own (the step also reports its VmHWM-based
peak). ``--synthetic-patients N`` first writes the planted synthetic features dataset of
``tests/features/test_selection.py`` (about 6 rows per patient) at PATH when PATH has no shards.
Prints one JSON line: wall_s, peak RSS (child ru_maxrss and the step's own), budget, sample rows,
feature counts, ΔAP/ΔBrier (and whether they pass docs/science.md §5.3), hazard-family recall and the families
missed, probe and noise-code false selections, the selected list. On a shared box pass
``--set select.num_threads=1``: oversubscribed OpenMP threads make LightGBM several times slower.
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


def _child(features: str, out: str, sets: list[str]) -> None:
    from clinrisk.config import load_config
    from clinrisk.selection import select_features

    cfg = load_config(None, sets)
    doc = select_features(cfg, Path(features), Path(out))
    ev = doc.get("evaluation", {})
    print(
        json.dumps(
            {
                "n_features_before": doc["n_features_before"],
                "n_features_after_filters": doc.get("n_features_after_filters"),
                "n_features_selected": doc["n_features_selected"],
                "sample_rows": doc.get("sample", {}).get("rows"),
                "row_cap": doc.get("sample", {}).get("row_cap"),
                "delta_ap": ev.get("delta_ap"),
                "delta_brier": ev.get("delta_brier"),
                "step_peak_rss_mb": doc["resources"]["peak_rss_mb"],
                "step_wall_s": doc["resources"]["wall_s"],
                "memory_budget_mb": doc["resources"]["memory_budget_mb"],
                "hazard_family_recall": doc.get("quality", {}).get("hazard_family_recall"),
                "families_missed": [
                    k
                    for k, f in doc.get("quality", {}).get("hazard_families", {}).items()
                    if not f["recovered"]
                ],
                "probe_false_selection_rate": doc.get("quality", {}).get("probe_false_selection_rate"),
                "noise_selected": doc.get("quality", {}).get("noise_selected"),
                "acceptable": ev.get("acceptable"),
                "validation_rows": ev.get("validation_rows"),
                "selected": doc["selected"],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "features", type=Path, help="features dataset dir (shard=NNN/part.parquet + feature_spec.json)"
    )
    ap.add_argument("--set", "-s", action="append", default=[], help="config override key=value (repeatable)")
    ap.add_argument(
        "--synthetic-patients", type=int, default=0, help="write a synthetic dataset at PATH first"
    )
    ap.add_argument("--shards", type=int, default=4, help="shards of the synthetic dataset")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        _child(str(args.features), args._out, args.set)
        return
    if args.synthetic_patients and not list(args.features.glob("shard=*/part.parquet")):
        from tests.features.test_selection import make_features_dataset

        make_features_dataset(args.features, n_patients=args.synthetic_patients, n_shards=args.shards)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            __file__,
            str(args.features),
            "--_child",
            "--_out",
            str(Path(tmp) / "selection"),
        ]
        for s in args.set:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    print(json.dumps({"wall_s": round(wall, 2), "child_peak_rss_mb": round(child_rss, 1), **child}))


if __name__ == "__main__":
    main()
