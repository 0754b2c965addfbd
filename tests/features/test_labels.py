"""Labels: eligibility, censoring, E0 / E1b / E2, and the evaluation-only truth columns."""

from __future__ import annotations

import polars as pl
import pytest

from clinrisk.config import LabelsConfig
from clinrisk.labels import build_labels, coding_miss_pmf, delay_support, eval_columns, total_delay_pmf
from tests.features.synth import frame, row

FPY, E = 2005, 2023


def _labels(rows, **cfg_kw) -> pl.DataFrame:
    cfg = LabelsConfig(**cfg_kw)
    return (
        build_labels(frame(rows).lazy(), cfg, first_prediction_year=FPY, last_year=E)
        .collect()
        .sort("patient_id", "year")
    )


def _patient(pid: int, years: range, t_rec: int | None = None, entry: int = 2000):
    return [row(pid, y, entry_year=entry, dx_E11=(t_rec is not None and y >= t_rec)) for y in years]


def test_e0_recorded_case_rows_and_exclusions() -> None:
    df = _labels(_patient(1, range(2000, 2024), t_rec=2012))
    # rows 2005..2011 (>= first prediction year, < T_rec); positives where T_rec <= t+3
    assert df["year"].to_list() == list(range(2005, 2012))
    assert df["label_rec"].to_list() == [0, 0, 0, 0, 1, 1, 1]
    assert df["label"].to_list() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert df["sample_weight"].to_list() == [1.0] * 7
    assert df.schema["label"] == pl.Float32 and df.schema["label_rec"] == pl.Int8


def test_censoring_drops_unfollowed_negatives_never_labels_them_zero() -> None:
    # Never recorded, leaves after 2015: negatives need t+3 <= 2015 -> t <= 2012.
    df = _labels(_patient(2, range(2003, 2016)))
    assert df["year"].to_list() == list(range(2005, 2013))
    assert (df["label_rec"] == 0).all()
    # Observed to E: negatives need t+3 <= 2023.
    df = _labels(_patient(3, range(2000, 2024)))
    assert df["year"].max() == 2020


def test_entry_min_history() -> None:
    df = _labels(_patient(4, range(2008, 2024), entry=2008))
    assert df["year"].min() == 2009  # min_history_years = 1
    df0 = _labels(_patient(4, range(2008, 2024), entry=2008), min_history_years=0)
    assert df0["year"].min() == 2008


def test_positive_kept_even_if_after_e_minus_h() -> None:
    df = _labels(_patient(5, range(2000, 2024), t_rec=2023))
    assert df.filter(pl.col("year") == 2022)["label_rec"].to_list() == [1]
    assert 2021 in df["year"].to_list() and df.filter(pl.col("year") == 2021)["label_rec"][0] == 1


def test_e1b_zero_weights_buffer_negatives_never_positives() -> None:
    rows = _patient(1, range(2000, 2024), t_rec=2015) + _patient(2, range(2000, 2024))
    df = _labels(rows, strategy="E1b")
    p1 = df.filter(pl.col("patient_id") == 1)
    # r - H - d_max = 2015 - 3 - 3 = 2009 .. r - H - 1 = 2011 get weight 0; positives 2012-2014 keep 1
    zero = p1.filter(pl.col("sample_weight") == 0)["year"].to_list()
    assert zero == [2009, 2010, 2011]
    assert (p1.filter(pl.col("label_rec") == 1)["sample_weight"] == 1).all()
    p2 = df.filter(pl.col("patient_id") == 2)
    # never recorded, L = 2023: band t > L - H - d_max = 2017
    assert p2.filter(pl.col("sample_weight") == 0)["year"].to_list() == [2018, 2019, 2020]
    assert (df["label"] == df["label_rec"].cast(pl.Float32)).all()


def test_e1b_band_ignores_the_coding_lag() -> None:
    """E1b's buffer and band use the clinical d_max and the label cutoff, whatever the assumed coding drift
    (docs/science.md §2.3: the lag leaves ỹ ≤ 0.0003 outside a never-recorded patient's band). The rows the
    lag makes ambiguous outside the buffer/band carry small soft labels under E2."""
    rows = _patient(1, range(2000, 2024), t_rec=2014) + _patient(2, range(2000, 2024))
    cut = pl.lit(2018)

    def zeroed(rate: float) -> list[tuple[int, int]]:
        cfg = LabelsConfig(strategy="E1b", assumed_coding_drift_per_year=rate, assumed_delay_year=E)
        df = build_labels(frame(rows).lazy(), cfg, first_prediction_year=FPY, last_year=E, known_through=cut)
        return (
            df.filter(pl.col("sample_weight") == 0)
            .select("patient_id", "year")
            .collect()
            .sort("patient_id", "year")
            .rows()
        )

    # recorded 2014: buffer 2014 - 3 - 3 = 2008 .. 2010; never recorded, cutoff 2018: band t > 2012
    expected = [(1, 2008), (1, 2009), (1, 2010), (2, 2013), (2, 2014), (2, 2015)]
    assert zeroed(0.0) == expected == zeroed(0.02)
    e2 = LabelsConfig(strategy="E2", assumed_coding_drift_per_year=0.02, assumed_delay_year=E)
    soft = build_labels(frame(rows).lazy(), e2, first_prediction_year=FPY, last_year=E, known_through=cut)
    outside = soft.filter(
        ((pl.col("patient_id") == 1) & (pl.col("year") < 2008))
        | ((pl.col("patient_id") == 2) & (pl.col("year") <= 2012))
    ).collect()
    assert 0 < outside["label"].max() < 0.03  # the recorded case's 2007 row: ỹ ≈ 0.027
    assert outside.filter(pl.col("patient_id") == 2)["label"].max() < 0.001


def test_e1b_reweights_only_the_given_rows() -> None:
    """E1b zeroes training rows only: validation rows near the cutoff are all in the end-of-follow-up
    band, and zeroing them would leave calibration almost only recorded cases (issue 16)."""
    rows = _patient(1, range(2000, 2024), t_rec=2015) + _patient(2, range(2000, 2024))
    cfg = LabelsConfig(strategy="E1b")
    df = (
        build_labels(
            frame(rows).lazy(),
            cfg,
            first_prediction_year=FPY,
            last_year=E,
            reweight_rows=pl.col("year") <= 2010,  # stands in for "the training split"
        )
        .collect()
        .sort("patient_id", "year")
    )
    zero = df.filter(pl.col("sample_weight") == 0)
    assert zero.select("patient_id", "year").rows() == [(1, 2009), (1, 2010)]
    assert (df.filter(pl.col("year") > 2010)["sample_weight"] == 1).all()


def test_e2_soft_labels() -> None:
    rows = _patient(1, range(2000, 2024), t_rec=2015) + _patient(2, range(2000, 2024))
    df = _labels(rows, strategy="E2", assumed_coding_drift_per_year=0.0)
    p1 = {r["year"]: r["label"] for r in df.filter(pl.col("patient_id") == 1).to_dicts()}
    pmf = dict(zip([-1, 0, 1, 2, 3], [0.05, 0.40, 0.30, 0.15, 0.10], strict=True))
    # t=2011: T* <= 2014 iff d >= 1 -> 0.55; t=2012 (recorded positive, r = t+H): d >= 0 -> 0.95
    assert p1[2011] == pytest.approx(pmf[1] + pmf[2] + pmf[3], abs=1e-6)
    assert p1[2012] == pytest.approx(0.95, abs=1e-6)
    assert p1[2013] == pytest.approx(1.0) and p1[2008] == pytest.approx(0.0)
    p2 = {r["year"]: r["label"] for r in df.filter(pl.col("patient_id") == 2).to_dicts()}
    hbar = LabelsConfig().assumed_annual_incidence
    # t = 2020 = L - H: hbar * sum_{d>0} pi(d) * d
    assert p2[2020] == pytest.approx(hbar * (0.30 * 1 + 0.15 * 2 + 0.10 * 3), rel=1e-5)
    assert p2[2017] == pytest.approx(0.0)
    assert ((df["label"] >= 0) & (df["label"] <= 1)).all()


def test_e2_equals_e0_at_delta_zero() -> None:
    rows = (
        _patient(1, range(2000, 2024), t_rec=2015)
        + _patient(2, range(2000, 2024))
        + _patient(3, range(2004, 2019), t_rec=2010)
        + _patient(4, range(2002, 2017))
    )
    delta0 = [0.0, 1.0, 0.0, 0.0, 0.0]
    kw = {"assumed_delay_pmf": delta0, "assumed_coding_drift_per_year": 0.0}
    e0 = _labels(rows, strategy="E0", **kw)
    e2 = _labels(rows, strategy="E2", **kw)
    assert e0.equals(e2)
    e1b = _labels(rows, strategy="E1b", **kw)
    assert e0.equals(e1b)  # no buffer without delay


def test_total_delay_pmf_is_year_aware_under_coding_drift() -> None:
    cfg = LabelsConfig(assumed_coding_drift_per_year=0.02)
    clinical = dict(delay_support(cfg))
    # at r = 0 the total delay is the clinical pmf in every year
    flat = LabelsConfig(assumed_coding_drift_per_year=0.0)
    for y in (2005, 2015, 2023):
        assert total_delay_pmf(flat, y, E) == {d: p for d, p in clinical.items() if p > 0}
    mean = {y: sum(d * p for d, p in total_delay_pmf(cfg, y, E).items()) for y in (2006, 2014, 2022)}
    for y in mean:
        assert sum(total_delay_pmf(cfg, y, E).values()) == pytest.approx(1.0, abs=1e-12)
    # coding sensitivity (1.02)^(y-E): earlier onsets wait longer for their code; at E it is the clinical pmf
    assert mean[2006] > mean[2014] > mean[2022] > sum(d * p for d, p in clinical.items())
    # the coding lag of a 2015 diagnosis: P(M = 0) = 1.02^-8, then the remainder codes the next year(s)
    miss = coding_miss_pmf(cfg, 2015, E)
    assert miss[0] == pytest.approx(1.02**-8) and sum(miss) == pytest.approx(1.0)
    assert total_delay_pmf(cfg, 2030, E) == {d: p for d, p in clinical.items() if p > 0}


def test_e2_soft_labels_under_coding_drift_shift_onset_earlier() -> None:
    """A case recorded in 2015 under coding drift had, in expectation, a longer delay than the clinical pmf
    says, so its onset is more likely early: the soft label of a row 4 years before is higher than at r = 0."""
    rows = _patient(1, range(2000, 2024), t_rec=2015) + _patient(2, range(2000, 2024))
    flat = _labels(rows, strategy="E2", assumed_coding_drift_per_year=0.0)
    drift = _labels(rows, strategy="E2", assumed_coding_drift_per_year=0.02)
    f1, d1 = (x.filter(pl.col("patient_id") == 1)["label"].to_numpy() for x in (flat, drift))
    assert (d1 >= f1 - 1e-7).all() and (d1 > f1 + 1e-3).any()
    # the recorded-case rows stay a monotone step in t
    assert (d1[1:] >= d1[:-1] - 1e-7).all()
    # never recorded: longer pending codes near L raise the expected label of the last rows
    f2, d2 = (x.filter(pl.col("patient_id") == 2)["label"].to_numpy() for x in (flat, drift))
    assert d2[-1] >= f2[-1] and ((d2 >= 0) & (d2 <= 1)).all()


@pytest.mark.parametrize("strategy", ["E0", "E1b", "E2"])
def test_calibration_rows_get_expected_true_labels(strategy: str) -> None:
    """labels.calibration_target=expected: the calibration rows' label is the E2 expected label whatever the
    strategy (the map then estimates true risk); other rows keep the strategy's label; recorded keeps all."""
    rows = _patient(1, range(2000, 2024), t_rec=2015) + _patient(2, range(2000, 2024))
    cal_rows = pl.col("patient_id") == 1
    cfg = LabelsConfig(strategy=strategy)
    expected = _labels(rows, strategy="E2")
    own = _labels(rows, strategy=strategy)
    got = (
        build_labels(
            frame(rows).lazy(), cfg, first_prediction_year=FPY, last_year=E, calibration_rows=cal_rows
        )
        .collect()
        .sort("patient_id", "year")
    )
    p1 = pl.col("patient_id") == 1
    assert got.filter(p1)["label"].equals(expected.filter(p1)["label"])
    assert got.filter(~p1)["label"].equals(own.filter(~p1)["label"])
    assert got["label_rec"].equals(own["label_rec"]) and got["sample_weight"].equals(own["sample_weight"])
    rec = (
        build_labels(
            frame(rows).lazy(),
            cfg.model_copy(update={"calibration_target": "recorded"}),
            first_prediction_year=FPY,
            last_year=E,
            calibration_rows=cal_rows,
        )
        .collect()
        .sort("patient_id", "year")
    )
    assert rec.equals(own)


def test_eval_columns_from_truth() -> None:
    truth = pl.DataFrame(
        {
            "patient_id": [1] * 6,
            "year": list(range(2010, 2016)),
            "hazard": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            "onset_year": [2013] * 6,
            "recorded_year": [2015] * 6,
        }
    ).with_columns(
        pl.col("year", "onset_year", "recorded_year").cast(pl.Int16), pl.col("hazard").cast(pl.Float32)
    )
    ev = eval_columns(truth.lazy(), 2).collect().sort("year")
    r = {row["year"]: row for row in ev.to_dicts()}
    assert r[2010]["eval_oracle_risk"] == pytest.approx(1 - (1 - 0.2) * (1 - 0.3), rel=1e-5)
    assert r[2013]["eval_oracle_risk"] == 1.0  # T* <= t
    assert r[2015]["eval_oracle_risk"] == 1.0
    none = truth.with_columns(
        pl.lit(None, dtype=pl.Int16).alias("onset_year"), pl.lit(None, dtype=pl.Int16).alias("recorded_year")
    )
    ev2 = {x["year"]: x for x in eval_columns(none.lazy(), 2).collect().to_dicts()}
    assert ev2[2014]["eval_oracle_risk"] == pytest.approx(0.6, rel=1e-5)  # 2016 missing: no hazard
    assert ev2[2015]["eval_oracle_risk"] == pytest.approx(0.0)
    assert ev2[2015]["eval_label_true"] == 0 and ev2[2015]["eval_undiagnosed"] == 0
    assert [r[y]["eval_label_true"] for y in range(2010, 2016)] == [0, 1, 1, 1, 1, 1]
    assert [r[y]["eval_undiagnosed"] for y in range(2010, 2016)] == [0, 0, 0, 1, 1, 0]
    assert r[2010]["eval_onset_year"] == 2013 and r[2010]["eval_recorded_year"] == 2015


def _cutoff_cohort() -> list[dict]:
    """300 patients with staggered entry/exit and diagnoses recorded before, at and after the cutoff."""
    import numpy as np

    rng = np.random.default_rng(7)
    rows: list[dict] = []
    for pid in range(1, 301):
        entry = int(rng.integers(2000, 2010))
        last = int(rng.choice([2016, 2018, 2019, 2021, 2023, 2023, 2023]))
        t_rec = int(rng.integers(2008, 2024)) if rng.random() < 0.4 else None
        rows += _patient(pid, range(entry, last + 1), t_rec=t_rec, entry=entry)
    return rows


@pytest.mark.parametrize("strategy", ["E0", "E1b", "E2"])
def test_train_and_validation_labels_use_only_data_known_at_the_cutoff(strategy: str) -> None:
    from clinrisk.config import SplitConfig
    from clinrisk.splits import assign_split, label_cutoff, label_known_through_expr

    split = SplitConfig()  # temporal: train 2005-2013, validation 2014-2015, test from 2019
    # the year the assumed delay pmf describes is a config fact (the truncated data's last year is not)
    cfg = LabelsConfig(strategy=strategy, assumed_delay_year=E)
    cutoff = label_cutoff(split, E)
    assert cutoff == 2018
    raw = frame(_cutoff_cohort())

    def labelled(data: pl.DataFrame, last_year: int, known_through: pl.Expr | None) -> pl.DataFrame:
        lf = build_labels(
            data.lazy(), cfg, first_prediction_year=FPY, last_year=last_year, known_through=known_through
        )
        return assign_split(lf, split, cfg.horizon_years).collect().sort("patient_id", "year")

    full = labelled(raw, E, label_known_through_expr(split, cfg.horizon_years, E))
    truncated = labelled(raw.filter(pl.col("year") <= cutoff), cutoff, None)
    fitted = pl.col("split").is_in(["train", "validation"])
    a, b = full.filter(fitted), truncated.filter(fitted)
    assert a.height > 500 and set(a["split"].unique()) == {"train", "validation"}
    assert a.equals(b)  # every train/validation label, soft or hard, and weight
    # test rows still see the whole follow-up
    assert full.filter(pl.col("split") == "test").height > 0
    # the cutoff matters: without it E2/E1b train+validation labels or weights would differ
    leaky = labelled(raw, E, None).filter(fitted)
    if strategy != "E0":
        assert not leaky.equals(a)
    else:
        assert leaky.equals(a)


def test_known_through_drops_later_diagnoses_from_soft_labels() -> None:
    # recorded in 2020, after a 2018 cutoff: with the cutoff the 2015 row is a never-recorded patient
    # observed to 2018 (small soft label); without it the row sees the 2020 diagnosis.
    rows = _patient(1, range(2000, 2024), t_rec=2020)
    cfg = LabelsConfig(strategy="E2", assumed_coding_drift_per_year=0.0)  # the clinical pmf's formulas
    lf = build_labels(frame(rows).lazy(), cfg, first_prediction_year=FPY, last_year=E)
    cut = build_labels(
        frame(rows).lazy(), cfg, first_prediction_year=FPY, last_year=E, known_through=pl.lit(2018)
    )
    leak = lf.collect().filter(pl.col("year") == 2015)["label"][0]
    known = cut.collect().filter(pl.col("year") == 2015)["label"][0]
    hbar = cfg.assumed_annual_incidence
    assert leak == pytest.approx(0.15 + 0.10, abs=1e-6)  # P(d >= 2): onset r - d <= 2018
    assert known == pytest.approx(hbar * (0.30 * 1 + 0.15 * 2 + 0.10 * 3), rel=1e-5)
