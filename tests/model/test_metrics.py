"""Metric functions against scikit-learn, Monte-Carlo label draws and hand-constructed cases."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn import metrics as skm

from clinrisk import metrics as M
from clinrisk.errors import DataError


def _data(n: int = 4000, seed: int = 0, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    p_true = 1 / (1 + np.exp(-(x - 2.3)))
    y = (rng.random(n) < p_true).astype(float)
    p = np.clip(p_true + rng.normal(0, 0.03, n), 0.001, 0.999)
    return y, (np.round(p, 2) if ties else p)


@pytest.mark.parametrize("ties", [True, False])
def test_ranking_and_proper_scores_match_sklearn(ties: bool) -> None:
    y, p = _data(ties=ties)
    assert M.average_precision(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert M.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert M.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert M.log_loss(y, p) == pytest.approx(skm.log_loss(y, p), abs=1e-12)


def test_weighted_versions_match_sklearn_sample_weight() -> None:
    y, p = _data(seed=3)
    w = np.random.default_rng(1).integers(0, 4, y.size)
    assert M.average_precision(y, p, w) == pytest.approx(skm.average_precision_score(y, p, sample_weight=w))
    assert M.roc_auc(y, p, w) == pytest.approx(skm.roc_auc_score(y, p, sample_weight=w))


def test_panel_matches_single_value_functions() -> None:
    y, p = _data(seed=5)
    panel = M.metric_panel(y, p, tau=0.2, p_t=0.1)
    op = M.operating_point(y, p, 0.2)
    assert panel["auc"][0] == pytest.approx(M.roc_auc(y, p))
    assert panel["ap_lift"][0] == pytest.approx(M.average_precision(y, p) / y.mean())
    assert panel["scaled_brier"][0] == pytest.approx(M.scaled_brier(y, p))
    assert panel["net_benefit"][0] == pytest.approx(M.net_benefit(y, p, 0.1))
    for k in ("sensitivity", "specificity", "ppv", "npv", "alert_rate"):
        assert panel[k][0] == pytest.approx(op[k])
    assert panel["oe"][0] == pytest.approx(M.calibration_in_the_large(y, p)["oe"])


def test_calibration_fit_solves_score_equations_and_detects_overconfidence() -> None:
    rng = np.random.default_rng(2)
    n = 60_000
    z = rng.normal(-2.5, 1.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    calibrated = 1 / (1 + np.exp(-z))
    fit = M.calibration_slope(y, calibrated)
    assert fit["slope"] == pytest.approx(1.0, abs=0.05)
    assert fit["intercept"] == pytest.approx(0.0, abs=0.1)
    # Score equations of the MLE: sum(y - mu) = 0 and sum(x (y - mu)) = 0.
    x = M.logit(calibrated)
    mu = 1 / (1 + np.exp(-(fit["intercept"] + fit["slope"] * x)))
    assert abs(np.sum(y - mu)) < 1e-6 * n and abs(np.sum(x * (y - mu))) < 1e-6 * n
    over = 1 / (1 + np.exp(-(2 * z + 2.5)))  # logits doubled around the mean: slope should be ~0.5
    assert M.calibration_slope(y, over)["slope"] == pytest.approx(0.5, abs=0.05)
    # O/E and calibration-in-the-large intercept: halving every risk makes O/E ~ 2 and the intercept > 0.
    citl = M.calibration_in_the_large(y, calibrated / 2)
    assert citl["oe"] == pytest.approx(2.0, rel=0.05) and citl["intercept"] > 0.5


def test_ici_zero_for_perfectly_calibrated_steps_and_positive_when_shifted() -> None:
    rng = np.random.default_rng(4)
    p = np.repeat([0.05, 0.1, 0.3], 20_000)
    y = (rng.random(p.size) < p).astype(float)
    assert M.ici(y, p)["ici"] < 0.01
    assert M.ici(y, np.clip(p + 0.1, 0, 1))["ici"] == pytest.approx(0.1, abs=0.01)


def test_expected_auc_matches_monte_carlo_label_draws() -> None:
    rng = np.random.default_rng(7)
    n = 5000
    p = 1 / (1 + np.exp(-rng.normal(-2.2, 1.2, n)))
    score = np.round(np.log(p / (1 - p)) + rng.normal(0, 0.8, n), 1)  # ties on purpose
    draws = [skm.roc_auc_score(rng.random(n) < p, score) for _ in range(200)]
    mc, sd = float(np.mean(draws)), float(np.std(draws))
    assert M.expected_auc(score, p) == pytest.approx(mc, abs=3 * sd / np.sqrt(200) + 1e-3)
    # Hard 0/1 "probabilities" reduce expected AUC to the ordinary AUC.
    y = (rng.random(n) < p).astype(float)
    assert M.expected_auc(score, y) == pytest.approx(skm.roc_auc_score(y, score))


def test_net_benefit_on_a_constructed_case() -> None:
    # 10 rows: alerts at p >= 0.2 are rows 0..3 (TP 3, FP 1); NB = (3 - 1 * 0.25) / 10.
    p = np.array([0.9, 0.5, 0.3, 0.2, 0.1, 0.1, 0.05, 0.05, 0.01, 0.01])
    y = np.array([1, 1, 0, 1, 0, 1, 0, 0, 0, 0], dtype=float)
    assert M.net_benefit(y, p, 0.2) == pytest.approx((3 - 1 * 0.25) / 10)
    curve = M.net_benefit_curve(y, p, [0.1, 0.2, 0.5])
    assert curve["model"][1] == pytest.approx(0.275)
    assert curve["model"][0] == pytest.approx((4 - 2 * (0.1 / 0.9)) / 10)
    assert curve["treat_all"][1] == pytest.approx(0.4 - 0.6 * 0.25)
    assert curve["alert_rate"] == [0.6, 0.4, 0.2]
    op = M.operating_point(y, p, 0.2)
    assert (op["tp"], op["fp"], op["fn"], op["tn"]) == (3, 1, 1, 5)
    assert op["ppv"] == 0.75 and op["nns"] == pytest.approx(4 / 3) and op["npv"] == pytest.approx(5 / 6)
    cm = M.confusion_matrix_at(y, p, 0.2)
    assert cm["matrix"] == [[5, 1], [1, 3]]


def test_default_net_benefit_grid_spans_002_to_030() -> None:
    y, p = _data(seed=9)
    grid = M.net_benefit_curve(y, p)["threshold"]
    assert grid[0] == pytest.approx(0.02) and grid[-1] == pytest.approx(0.30)
    direct = [M.net_benefit(y, p, t) for t in grid]
    assert np.allclose(M.net_benefit_curve(y, p)["model"], direct)


def test_roc_points_are_downsampled_and_match_sklearn_auc() -> None:
    y, p = _data(n=20_000, ties=False)
    roc = M.roc_points(y, p, max_points=200)
    assert len(roc["fpr"]) <= 200
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0) and (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.isfinite(roc["thresholds"]))
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(skm.roc_auc_score(y, p), abs=0.005)


def test_bootstrap_replicate_equals_metrics_on_explicitly_resampled_patients() -> None:
    y, p = _data(n=600, seed=11)
    pid = np.repeat(np.arange(200), 3)
    codes, n_pat = M.patient_codes(pid)
    counts = M.cluster_counts(n_pat, 3, seed=5)
    W = counts[:, codes].astype(float)
    panel = M.metric_panel(y, p, W, tau=0.2, p_t=0.1)
    for b in range(3):
        rows = np.repeat(np.arange(y.size), W[b].astype(int))
        assert panel["auc"][b] == pytest.approx(skm.roc_auc_score(y[rows], p[rows]))
        assert panel["ap"][b] == pytest.approx(skm.average_precision_score(y[rows], p[rows]))
        assert panel["brier"][b] == pytest.approx(skm.brier_score_loss(y[rows], p[rows]))
        assert panel["cal_slope"][b] == pytest.approx(
            M.calibration_slope(y[rows], p[rows])["slope"], abs=1e-6
        )


def test_bootstrap_panel_cis_bracket_point_and_cluster_ci_is_wider_than_row_ci() -> None:
    rng = np.random.default_rng(0)
    n_pat, per = 400, 5
    risk = rng.beta(1, 8, n_pat)
    pid = np.repeat(np.arange(n_pat), per)
    # Rows of a patient share the same outcome: strong clustering.
    y = np.repeat((rng.random(n_pat) < risk).astype(float), per)
    p = np.clip(np.repeat(risk, per) + rng.normal(0, 0.02, pid.size), 0.001, 0.999)
    clus = M.bootstrap_panel(y, p, pid, tau=0.1, p_t=0.1, n_boot=200, seed=1)
    rows = M.bootstrap_panel(y, p, np.arange(pid.size), tau=0.1, p_t=0.1, n_boot=200, seed=1)
    for k in ("auc", "brier", "oe", "ap"):
        assert clus[k]["lo"] <= clus[k]["value"] <= clus[k]["hi"]
    assert (clus["brier"]["hi"] - clus["brier"]["lo"]) > 1.5 * (rows["brier"]["hi"] - rows["brier"]["lo"])
    again = M.bootstrap_panel(y, p, pid, tau=0.1, p_t=0.1, n_boot=200, seed=1)
    assert again == clus  # deterministic given the seed


def test_paired_bootstrap_difference() -> None:
    y, p = _data(n=3000, seed=2)
    pid = np.repeat(np.arange(1000), 3)
    same = M.paired_bootstrap_diff(y, p, p, pid, tau=0.1, p_t=0.1, n_boot=50)
    assert same["auc"]["diff"] == 0 and same["auc"]["lo"] == 0 and same["auc"]["hi"] == 0
    noisy = np.clip(p + np.random.default_rng(0).normal(0, 0.15, p.size), 0.001, 0.999)
    d = M.paired_bootstrap_diff(y, noisy, p, pid, tau=0.1, p_t=0.1, n_boot=100, p_oracle=p)
    assert d["auc"]["diff"] == pytest.approx(M.roc_auc(y, p) - M.roc_auc(y, noisy))
    assert d["auc"]["lo"] > 0 and d["brier"]["hi"] < 0 and d["auc"]["p_value"] < 0.05
    assert d["excess_brier"]["diff"] < 0


def test_patient_level_detection_constructed() -> None:
    # Patient 1: onset 2020, coded 2022, alerted 2019 -> detected for k >= 1, lead 3.
    # Patient 2: onset 2021, coded 2021, alert only 2020? no: rows 2019-2020 never alerted -> missed.
    # Patient 3: never onset, alerted once -> false alarm. Patient 4: never onset, never alerted.
    # Patient 5: onset 2022 (last row + 2), alerted 2019 -> too early for k = 1, 2; counts for k = 3.
    pid = np.array([1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    year = np.array([2019, 2020] * 5)
    p = np.array([0.5, 0.6, 0.01, 0.02, 0.3, 0.01, 0.01, 0.01, 0.4, 0.01])
    nan = np.nan
    onset = np.array([2020, 2020, 2021, 2021, nan, nan, nan, nan, 2022, 2022])
    rec = np.array([2022, 2022, 2021, 2021, nan, nan, nan, nan, nan, nan])
    ytrue = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1])
    out = M.patient_level_metrics(pid, year, p, onset, rec, tau=0.25, ks=(1, 2, 3), label_true=ytrue)
    assert out["n_case_patients"] == 3
    assert out["sensitivity_1"]["value"] == pytest.approx(1 / 3)
    assert out["sensitivity_2"]["value"] == pytest.approx(1 / 3)
    assert out["sensitivity_3"]["value"] == pytest.approx(2 / 3)
    assert out["lead_time"]["n"] == 1 and out["lead_time"]["median"] == 3
    assert out["false_alarm_share"]["value"] == 0.5
    assert out["alerts_per_1000_patient_years"] == pytest.approx(400.0)
    assert out["false_alerts_per_1000_patient_years"] == pytest.approx(100.0)
    boot = M.patient_level_metrics(pid, year, p, onset, rec, tau=0.25, n_boot=50, label_true=ytrue)
    assert 0 <= boot["sensitivity_3"]["lo"] <= boot["sensitivity_3"]["hi"] <= 1
    # The caller's resamples (the evaluation's: same patients, B and seed) give the same result.
    counts = M.cluster_counts(5, 50, 0)
    given = M.patient_level_metrics(
        pid, year, p, onset, rec, tau=0.25, n_boot=50, label_true=ytrue, counts=counts
    )
    assert given == boot
    with pytest.raises(DataError, match=r"counts has shape \(50, 4\), expected \(50, 5\)"):
        M.patient_level_metrics(pid, year, p, onset, rec, tau=0.25, n_boot=50, counts=counts[:, :4])


def test_bad_inputs_raise_named_errors() -> None:
    with pytest.raises(DataError, match="p: contains NaN"):
        M.roc_auc([0, 1], [0.1, np.nan])
    with pytest.raises(DataError, match="length mismatch"):
        M.brier([0, 1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        M.log_loss([0, 1], [0.1, 1.2])
    with pytest.raises(DataError, match="p_t"):
        M.net_benefit([0, 1], [0.1, 0.2], 1.0)
    assert np.isnan(M.roc_auc([0, 0], [0.1, 0.2]))


def _tied_clustered(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores with many ties (as a calibrated LightGBM gives) and bootstrap count weights."""
    rng = np.random.default_rng(seed)
    n_pat = 600
    codes = np.repeat(np.arange(n_pat), 3)
    p = np.round(rng.beta(1, 6, codes.size), 2).clip(0.01, 0.99)
    y = (rng.random(codes.size) < p).astype(float)
    W = M.cluster_counts(n_pat, 7, seed=seed)[:, codes].astype(float)
    return y, p, W


def _reference_logistic_fit(x, y, W, *, fix_slope, init=(0.0, 1.0), iters=30):  # type: ignore[no-untyped-def]
    """The textbook Newton step the in-place fit must reproduce bit for bit."""
    nb = W.shape[0]
    a = np.full(nb, init[0])
    b = np.full(nb, 1.0 if fix_slope else init[1])
    wy, wyx, x2 = W @ y, W @ (y * x), x * x
    for _ in range(iters):
        mu = 1.0 / (1.0 + np.exp(-(a[:, None] + b[:, None] * x)))
        wmu = W * mu
        g0 = wy - wmu.sum(axis=1)
        s = wmu * (1.0 - mu)
        h00 = s.sum(axis=1)
        if fix_slope:
            da = np.clip(np.nan_to_num(M._div(g0, h00)), -5, 5)
            a = a + da
            if np.max(np.abs(da)) < 1e-9:
                break
            continue
        g1 = wyx - wmu @ x
        h01, h11 = s @ x, s @ x2
        det = h00 * h11 - h01 * h01
        da = np.clip(np.nan_to_num(M._div(h11 * g0 - h01 * g1, det)), -5, 5)
        db = np.clip(np.nan_to_num(M._div(h00 * g1 - h01 * g0, det)), -5, 5)
        a, b = a + da, b + db
        if max(np.max(np.abs(da)), np.max(np.abs(db))) < 1e-9:
            break
    return a, b


@pytest.mark.parametrize("seed", [0, 1])
def test_in_place_calibration_fit_is_bit_identical_to_the_textbook_step(seed: int) -> None:
    y, p, W = _tied_clustered(seed)
    x = M.logit(p)
    for fix_slope in (True, False):
        got = M._logistic_fit(x, y, W, fix_slope=fix_slope, init=(0.1, 0.9))
        want = _reference_logistic_fit(x, y, W, fix_slope=fix_slope, init=(0.1, 0.9))
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


@pytest.mark.parametrize("seed", [0, 1])
def test_panel_subsets_and_shared_auc_ap_pass_are_bit_identical_to_the_full_panel(seed: int) -> None:
    y, p, W = _tied_clustered(seed)
    full = M.metric_panel(y, p, W, tau=0.2, p_t=0.1, p_oracle=p)
    assert set(full) == set(M.PANEL_METRICS)
    fast = M.metric_panel(y, p, W, tau=0.2, p_t=0.1, p_oracle=p, integer_weights=True)
    assert all(np.array_equal(fast[k], full[k], equal_nan=True) for k in full)
    assert list(fast) == list(full)  # same key order: the JSON report keeps its layout
    subset = ("prevalence", "auc", "ap", "cal_slope", "net_benefit", "ppv")
    part = M.metric_panel(y, p, W, tau=0.2, p_t=0.1, only=subset, integer_weights=True)
    assert set(part) == {*subset, "_slope_intercept"}  # the slope fit's intercept rides along (warm starts)
    assert all(np.array_equal(part[k], full[k], equal_nan=True) for k in part)
    # Fractional weights take the separate AUC and AP passes and still agree with sklearn.
    frac = W[0] + 0.25
    one = M.metric_panel(y, p, frac, tau=0.2, p_t=0.1, only=("auc", "ap"))
    assert one["auc"][0] == pytest.approx(skm.roc_auc_score(y, p, sample_weight=frac))
    assert one["ap"][0] == pytest.approx(skm.average_precision_score(y, p, sample_weight=frac))


def test_bootstrap_with_only_gives_the_full_bootstrap_numbers() -> None:
    y, p, _ = _tied_clustered(3)
    pid = np.repeat(np.arange(600), 3)
    codes, n_pat = M.patient_codes(pid)
    counts = M.cluster_counts(n_pat, 40, seed=2)
    pt_full, reps_full = M.bootstrap_replicates(y, p, None, tau=0.2, p_t=0.1, counts=counts, codes=codes)
    only = ("prevalence", "auc", "oe", "cal_slope")
    pt, reps = M.bootstrap_replicates(y, p, None, tau=0.2, p_t=0.1, counts=counts, codes=codes, only=only)
    assert set(pt) == set(reps) == set(only)
    assert all(pt[k] == pt_full[k] and np.array_equal(reps[k], reps_full[k], equal_nan=True) for k in only)
    with pytest.raises(DataError, match=r"metric panel: unknown metrics \['auroc'\]"):
        M.metric_panel(y, p, tau=0.2, p_t=0.1, only=("auc", "auroc"))


def test_cluster_count_chunks_are_row_blocks_of_the_same_draw() -> None:
    """The streamed resamples: any range of the one-shot draw, a few replicates at a time, in uint8 (the
    replicates before the range are drawn and dropped, so the stream is the same)."""
    n_pat, n_boot = 120_000, 70  # 33 replicates per drawn piece: chunks and ranges cut inside pieces too
    whole = M.cluster_counts(n_pat, n_boot, seed=9)
    for start, stop, size in ((0, 70, 70), (0, 35, 16), (35, 70, 16), (34, 69, 1), (1, 2, 5), (0, 70, 33)):
        chunks = list(M.cluster_count_chunks(n_pat, 9, start, stop, size))
        assert [c.shape[0] for c in chunks[:-1]] == [size] * (len(chunks) - 1)
        assert 1 <= chunks[-1].shape[0] <= size
        assert np.array_equal(np.concatenate(chunks), whole[start:stop]), (start, stop, size)
        assert all(c.dtype == np.uint8 and c.flags.c_contiguous for c in chunks)
    for bad in ((-1, 5, 2), (5, 5, 2), (6, 5, 2), (0, 5, 0)):
        with pytest.raises(DataError, match="bad range"):
            list(M.cluster_count_chunks(n_pat, 9, *bad))


def test_patient_level_metrics_from_streamed_sums_equal_the_whole_counts() -> None:
    """The evaluation sums the patient sets per streamed chunk (:func:`count_sums`) and adds the CIs after
    (:func:`patient_level_cis`): the same result as :func:`patient_level_metrics` on the whole counts."""
    rng = np.random.default_rng(3)
    pid = np.repeat(np.arange(400), 3)
    year = np.tile([2020.0, 2021.0, 2022.0], 400)
    onset = np.repeat(np.where(rng.random(400) < 0.3, 2021.0, np.nan), 3)
    rec = onset + 1
    p = rng.random(pid.size)
    kw = dict(tau=0.5, n_boot=30, alpha=0.1)
    n_pat = M.patient_codes(pid)[1]
    whole = M.patient_level_metrics(pid, year, p, onset, rec, counts=M.cluster_counts(n_pat, 30, 4), **kw)
    assert whole == M.patient_level_metrics(pid, year, p, onset, rec, seed=4, **kw)  # drawn the same
    level = M.patient_level_point(pid, year, p, onset, rec, tau=0.5)
    assert len(level.members) == 6  # the cases and never-onset patients are shared denominators
    sums = np.concatenate(
        [M.count_sums(c, level.members) for c in M.cluster_count_chunks(n_pat, 4, 0, 30, 7)]
    )
    assert M.patient_level_cis(level, sums, 0.1) == whole
    assert "lo" in whole["sensitivity_1"] and "lo" in whole["false_alarm_share"]
    with pytest.raises(DataError, match=r"counts has shape \(29, 400\)"):
        M.patient_level_metrics(pid, year, p, onset, rec, counts=M.cluster_counts(n_pat, 29, 4), **kw)
    with pytest.raises(DataError, match=r"sums have shape \(30, 5\)"):
        M.patient_level_cis(level, sums[:, :5], 0.1)


def test_cluster_counts_are_the_one_shot_draw_in_a_compact_type() -> None:
    # More replicates than one chunk holds, so the chunked draw is exercised.
    n_pat, n_boot = 300_000, 40
    counts = M.cluster_counts(n_pat, n_boot, seed=4)
    ref = np.random.default_rng(4).multinomial(n_pat, np.full(n_pat, 1.0 / n_pat), size=n_boot)
    assert np.array_equal(counts, ref)
    assert counts.dtype == np.uint8  # 1 byte a cell instead of 8
    # Each part shrinks as it is drawn: the peak is one part's int64 draw plus the uint8 parts and their
    # concatenation (keeping every part as uint32 until the end needed 8 bytes a cell more).
    tracemalloc.start()
    M.cluster_counts(n_pat, n_boot, seed=4)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_part_int64 = (4_000_000 // n_pat) * n_pat * 8
    assert peak < 1.2 * one_part_int64 + 2 * counts.nbytes, peak  # 46 MB here; 111 MB before
    # Patient-level bootstrap shares from the compact counts equal the float64 matrix product.
    rng = np.random.default_rng(0)
    member, den = rng.random(n_pat) < 0.2, rng.random(n_pat) < 0.7
    sums = M.count_sums(counts, [member & den, den])
    got = sums[:, 0] / sums[:, 1]
    want = (ref.astype(float) @ (member & den).astype(float)) / (ref.astype(float) @ den.astype(float))
    assert np.array_equal(got, want)


def test_rows_sorted_by_descending_score_give_the_same_bootstrap_without_copies() -> None:
    """The evaluation hands the bootstraps rows already in :func:`descending_order` (ties included): the
    numbers are the unsorted rows' to the last bit, and no per-row copy is made to sort them."""
    rng = np.random.default_rng(11)
    n_pat = 20_000
    codes = np.repeat(np.arange(n_pat), 5)
    p = np.round(rng.beta(1, 6, codes.size), 3).clip(0.001, 0.999)  # many ties
    y = (rng.random(codes.size) < p).astype(float)
    po = rng.random(codes.size)
    counts = M.cluster_counts(n_pat, 4, seed=1)
    o = M.descending_order(p)
    assert np.array_equal(o, np.argsort(-p, kind="stable"))
    kw = dict(tau=0.2, p_t=0.1, counts=counts)
    pt, reps = M.bootstrap_replicates(y, p, None, codes=codes, p_oracle=po, **kw)

    def traced(*args: np.ndarray) -> tuple[tuple[dict[str, float], dict[str, np.ndarray]], int]:
        tracemalloc.start()
        out = M.bootstrap_replicates(args[0], args[1], None, codes=args[2], p_oracle=args[3], **kw)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return out, peak

    (pt_s, reps_s), peak_sorted = traced(y[o], p[o], codes[o], po[o])
    (_, _), peak_unsorted = traced(y, p, codes, po)
    assert pt_s == pt
    assert all(np.array_equal(reps[k], reps_s[k], equal_nan=True) for k in reps)
    # Sorting copies y, p, codes and p_oracle (8 bytes a row each) and ranks the rows a second time.
    assert peak_unsorted - peak_sorted >= 4 * 8 * codes.size, (peak_unsorted, peak_sorted)


def test_a_bootstraps_working_set_does_not_grow_with_its_rows() -> None:
    """The chunks' cells and the rows the bootstrap reads share one budget: ten times the rows take fewer
    replicates a chunk, so the chunk's temporaries shrink by more than the rows add. Without the shared
    budget both sizes traced the same chunk temporaries (196 MB here), and the larger rows came on top."""

    def peak(n: int, n_boot: int) -> int:
        rng = np.random.default_rng(n)
        p = np.sort(rng.random(n))[::-1].copy()
        y = (rng.random(n) < p).astype(np.float64)
        codes = np.arange(n, dtype=np.int64) // 2
        counts = M.cluster_counts(n // 2, n_boot, seed=1)
        rows = M.BootstrapRows.of(y, p, codes)
        assert rows.copies == 0 and rows.row_arrays == 3  # sorted: the caller's arrays, no copies
        point = M.bootstrap_point(rows, tau=0.5, p_t=0.1, only=("prevalence", "auc", "ap"))
        tracemalloc.start()
        reps = M.bootstrap_chunk(rows, counts, point, tau=0.5, p_t=0.1, only=("prevalence", "auc", "ap"))
        got = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert reps["auc"].shape == (n_boot,)
        return got

    small, large = peak(80_000, 60), peak(800_000, 6)
    assert large <= 0.7 * small, (small, large)
    unsorted = M.BootstrapRows.of(np.zeros(4), np.array([0.1, 0.4, 0.2, 0.3]), np.arange(4))
    assert unsorted.copies == 3 and unsorted.row_arrays == 6  # sorted copies count too
