"""Generator coding drift (issue #16): coding sensitivity rises by ``secular_coding_per_year`` a year, the E11
code included, while the true course (onset, hazard, glycaemia, clinical diagnosis) does not move."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clinrisk.config import ClinriskConfig
from clinrisk.errors import ConfigError
from clinrisk.generator.simulate import ChunkResult, coding_miss_years, coding_multiplier, simulate_chunk

N_PATIENTS = 12_000
ALPHA = -4.0  # fixed: the α bisection is not under test and costs a pilot run
FIRST, LAST = 2000, 2023


@pytest.fixture(scope="module")
def chunks(gen_config: Callable[..., ClinriskConfig]) -> dict[float, tuple[ClinriskConfig, ChunkResult]]:
    """The same seed and patients simulated with coding drift 0, 2 %/yr (the default) and 5 %/yr."""
    out = {}
    for rate in (0.0, 0.02, 0.05):
        cfg = gen_config(
            f"generate.n_patients={N_PATIENTS}",
            "generate.block_size=1000",
            f"generate.secular_coding_per_year={rate}",
        )
        blocks = list(range(N_PATIENTS // cfg.generate.block_size))
        out[rate] = (cfg, simulate_chunk(cfg.generate, 11, blocks, ALPHA))
    return out


def test_default_rate_is_two_percent_a_year(gen_config: Callable[..., ClinriskConfig]) -> None:
    g = gen_config().generate
    assert g.secular_drift and g.secular_coding_per_year == 0.02
    assert coding_multiplier(g, LAST) == pytest.approx(1.0)
    assert coding_multiplier(g, LAST - 10) == pytest.approx(1.02**-10)
    assert coding_multiplier(g, FIRST - 3) == pytest.approx(coding_multiplier(g, FIRST))  # warm-up years


def test_true_course_does_not_depend_on_coding(chunks: dict) -> None:
    _, base = chunks[0.0]
    for rate in (0.02, 0.05):
        _, res = chunks[rate]
        np.testing.assert_array_equal(res.onset_year, base.onset_year)
        np.testing.assert_array_equal(res.dx_year, base.dx_year)
        np.testing.assert_array_equal(res.delay, base.delay)
        np.testing.assert_array_equal(res.keep, base.keep)
        np.testing.assert_array_equal(res.eta0, base.eta0)
        for name in ("hazard", "g_latent", "alive", "enrolled", "visits", "hba1c", "weight", "sbp"):
            np.testing.assert_array_equal(res.mats[name], base.mats[name], err_msg=name)
        # the code lands on or after the clinical diagnosis, and later for some patients
        rec, dx = res.recorded_year, res.dx_year
        assert ((rec < 0) | (rec >= dx)).all()
        assert (rec[rec >= 0] > dx[rec >= 0]).sum() > 50
    # without drift the code is recorded at the clinical diagnosis (the memo's delay pmf, unchanged)
    assert (base.recorded_year == base.dx_year).all()


@pytest.mark.parametrize("rate", [0.02, 0.05])
@pytest.mark.parametrize("code", ["I10", "E66"])
def test_comorbidity_code_rate_rises_by_the_configured_rate(chunks: dict, rate: float, code: str) -> None:
    """Same conditions and uniforms in both runs, so the yearly code count ratio is (1 + r)^(t − E)."""
    _, base = chunks[0.0]
    _, res = chunks[rate]
    years = base.years
    obs = years <= LAST
    n0 = base.mats[f"dx_{code}"][obs].sum(axis=1).astype(np.float64)
    n1 = res.mats[f"dx_{code}"][obs].sum(axis=1).astype(np.float64)
    assert n0.min() > 300
    slope = np.polyfit(years[obs] - LAST, np.log(n1 / n0), 1, w=np.sqrt(n0))[0]
    assert slope == pytest.approx(np.log1p(rate), abs=0.004)
    assert n1[-1] == pytest.approx(n0[-1], rel=0.01)  # sensitivity at E is the memo's


@pytest.mark.parametrize("rate", [0.02, 0.05])
def test_diabetes_code_misses_follow_calendar_sensitivity(chunks: dict, rate: float) -> None:
    """Share of clinical diagnoses whose E11 code is missed in the diagnosis year = 1 − (1 + r)^(t − E)."""
    _, res = chunks[rate]
    dx, rec = res.dx_year, res.recorded_year
    has = (dx >= FIRST) & (dx <= LAST)
    late = (rec[has] > dx[has]) | (rec[has] < 0)  # never recorded while alive: missed every year
    expected = 1.0 - (1.0 + rate) ** (dx[has].astype(np.float64) - LAST)
    assert has.sum() > 500
    se = np.sqrt((expected * (1 - expected)).sum()) / has.sum()
    assert late.mean() == pytest.approx(expected.mean(), abs=4 * se + 0.005)
    early, recent = dx[has] < 2010, dx[has] >= 2016
    assert late[early].mean() > late[recent].mean() + 0.1  # the code becomes more reliable over time


def test_coding_miss_years_edges(gen_config: Callable[..., ClinriskConfig]) -> None:
    g = gen_config().generate
    dx = np.array([-1, 2000, 2010, 2023, 2026])
    # u = 0 misses every year with sensitivity < 1, i.e. until E; u → 1 never misses
    np.testing.assert_array_equal(coding_miss_years(g, dx, np.zeros(5)), [0, 23, 13, 0, 0])
    np.testing.assert_array_equal(coding_miss_years(g, dx, np.full(5, 1 - 1e-12)), [0, 0, 0, 0, 0])
    off = gen_config("generate.secular_drift=false").generate
    np.testing.assert_array_equal(coding_miss_years(off, dx, np.zeros(5)), np.zeros(5))
    none = gen_config("generate.secular_coding_per_year=0").generate
    np.testing.assert_array_equal(coding_miss_years(none, dx, np.zeros(5)), np.zeros(5))


def test_coding_rate_is_validated(gen_config: Callable[..., ClinriskConfig]) -> None:
    with pytest.raises(ConfigError, match="secular_coding_per_year"):
        gen_config("generate.secular_coding_per_year=-0.01")


def test_manifest_states_the_coding_drift(gen_dataset: tuple[Path, dict[str, Any]]) -> None:
    m = gen_dataset[1]
    assert m["secular_drift"] is True and m["secular_coding_per_year"] == 0.02
