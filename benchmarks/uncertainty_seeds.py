"""Multi-seed uncertainty suite (issue 16): E0 / E1b / E2 vs tier C (same learner on true labels), tier B
(oracle on the latent history) and tier A (oracle with the realised future hazards), over generator seeds ×
LightGBM seeds; prints per arm the mean ± between-seed SD of true-label AUC, AP, Brier, excess Brier, O/E,
expected O/E and expected AUC, per seed the paired excess-Brier difference E2 − E0 (the rule's criterion) and
the share of the E0 → C gap E2 closes where that gap is resolved, with bootstrap CIs, and the verdict of the
stated rule (which label strategy ships).

Not a ``bench_*`` script (``make bench`` would run it): at the recorded scale (40,000 patients per seed) it
took about 7.5 min per generator seed on the loaded 2-core machine. The figures in the README came from::

    nice -n 15 .venv/bin/python benchmarks/uncertainty_seeds.py --seeds 11,12,13,14,15 --patients 40000 \
        --boot 1000 --set train.num_threads=1 --set generate.calibration_patients=5000 \
        --out outputs/seed_suite40 --resume

(seed 11 was run first alone, with ``--seeds 11 --min-seeds 1 --min-wins 1``, to time it; ``--resume``
reused it). ``--summarise-only --out DIR`` re-prints the table of an existing suite directory. Every option:
``python -m clinrisk.seed_suite --help``.
"""

from __future__ import annotations

from clinrisk.seed_suite import main

if __name__ == "__main__":
    raise SystemExit(main())
