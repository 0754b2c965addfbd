"""Generator coding drift, measured (issue 16): the same seed and patients simulated with the configured
``generate.secular_coding_per_year`` and with 0, so every difference is coding alone (the true course is
identical by construction, tests/data/test_coding_drift.py). Prints, per calendar year:

- the ratio of recorded I10 / E66 code counts (drift / no drift) — the comorbidity coding intensity;
- the share of clinical T2D diagnoses of that year whose E11 code is recorded the same year;
- the recorded share of true 3-year cases among eligible rows (t < T_rec), i.e. how many true positives the
  recorded label E0 sees, with and without coding drift.

Not a ``bench_*`` script (it measures the data, not the code). The README figures came from::

    nice -n 10 .venv/bin/python benchmarks/coding_drift.py --patients 60000
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from clinrisk.config import load_config
from clinrisk.errors import ConfigError
from clinrisk.generator.calibrate import calibrate_alpha
from clinrisk.generator.simulate import ChunkResult, simulate_chunk

HORIZON = 3


def _simulate(overrides: list[str], alpha: float | None) -> tuple[ChunkResult, float]:
    g = load_config(None, overrides).generate
    a = alpha if alpha is not None else calibrate_alpha(g, 11)["alpha"]
    blocks = list(range(-(-g.n_patients // g.block_size)))
    return simulate_chunk(g, 11, blocks, a), a


def label_capture(res: ChunkResult, first_row: int) -> dict[int, float]:
    """Per year t: share of eligible rows with onset ≤ t + H whose code is recorded by t + H."""
    out = {}
    rec = np.where(res.recorded_year >= 0, res.recorded_year, 10**6)
    onset = np.where(res.onset_year >= 0, res.onset_year, 10**6)
    for j, t in enumerate(res.years.tolist()):
        if t < first_row or t + HORIZON > 2023:
            continue
        elig = res.keep & res.mats["enrolled"][j] & (t < rec)
        true_pos = elig & (onset <= t + HORIZON)
        out[t] = float((rec[true_pos] <= t + HORIZON).mean()) if true_pos.any() else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--patients", type=int, default=60_000)
    p.add_argument("--rate", type=float, default=None, help="coding drift (default: the config's)")
    a = p.parse_args(argv)
    base = [f"generate.n_patients={a.patients}", "generate.block_size=1000"]
    try:
        rate = a.rate if a.rate is not None else load_config(None, []).generate.secular_coding_per_year
        drift, alpha = _simulate([*base, f"generate.secular_coding_per_year={rate}"], None)
        flat, _ = _simulate([*base, "generate.secular_coding_per_year=0"], alpha)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    first_row = 2005
    cap_d, cap_f = label_capture(drift, first_row), label_capture(flat, first_row)
    print(f"# Coding drift r = {rate} vs 0, {a.patients} patients, seed 11, alpha {alpha:.4f}\n")
    print("| year | I10 codes ratio | E66 codes ratio | (1+r)^(t−E) | E11 coded in dx year | recorded share of "
          f"true {HORIZON}-y cases: drift | no drift |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for j, t in enumerate(drift.years.tolist()):
        if t > 2023:
            break
        ratio = {
            c: drift.mats[f"dx_{c}"][j].sum() / max(flat.mats[f"dx_{c}"][j].sum(), 1) for c in ("I10", "E66")
        }
        dx = drift.dx_year == t
        same = float((drift.recorded_year[dx] == t).mean()) if dx.any() else float("nan")
        cd, cf = cap_d.get(t), cap_f.get(t)
        cells = [f"{cd:.3f}" if cd is not None else "–", f"{cf:.3f}" if cf is not None else "–"]
        print(
            f"| {t} | {ratio['I10']:.3f} | {ratio['E66']:.3f} | {(1 + rate) ** (t - 2023):.3f} | "
            f"{same:.3f} (n={int(dx.sum())}) | {cells[0]} | {cells[1]} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
