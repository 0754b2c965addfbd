"""Evaluation report: Markdown whose sentences are derived from this run's numbers, plus PNG plots.

Nothing here is canned: every finding and every proposed improvement is chosen by explicit rules over the
``evaluate_predictions`` result (see :func:`findings` and :func:`recommendations`), so a different run
gives a different text.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any

PLOTS = ("roc", "pr", "calibration", "net_benefit", "slices")
REPORT_HTML = "report.html"
# A Markdown image whose target is a relative path (no scheme, not absolute): what the report links.
_RELATIVE_IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>(?![a-zA-Z][a-zA-Z0-9+.-]*:)(?!/)[^)\s]+)\)")
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

# Rule thresholds for recommendations (kept here, named, so the report can quote them).
OE_UNDER = 0.9
NOISE_FP_HIGH = 0.25
HBA1C_FN_DOMINANCE = 1.25  # FN share / positive share of rows without an HbA1c in the window
ORACLE_GAP_LARGE = 0.05  # expected-AUC gap to the oracle
SLOPE_BOUNDS = (0.85, 1.15)
ALERT_RATE_HIGH = 0.15
FLAGGED_SHADE = "#ffe08a"  # background of flagged slices in the slices chart (not a series colour)


def _f(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{nd}f}"


def _pct(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{100 * x:.{nd}f}%"


def _ci(m: dict[str, Any], nd: int = 3) -> str:
    return f"{_f(m.get('value'), nd)} [{_f(m.get('lo'), nd)}, {_f(m.get('hi'), nd)}]"


def _ok(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


# ---------------------------------------------------------------------------------------------- rules


def calibration_gap(result: dict[str, Any]) -> dict[str, Any]:
    """Overall O/E vs true minus vs recorded, and the insurance level where that gap is largest."""
    o = result["overall"]
    gap = o["true"]["oe"]["value"] - o["recorded"]["oe"]["value"]
    worst = None
    rows = [r for r in result.get("label_noise_blind_spot", []) if _ok(r.get("gap"))]
    if rows:
        worst = max(rows, key=lambda r: r["gap"])
    return {"overall_gap": gap, "worst": worst}


def hba1c_fn_dominance(result: dict[str, Any]) -> float | None:
    """FN share / positive share (true labels) of rows without an HbA1c in the window; > 1 = over-represented."""
    ct = result.get("error_analysis", {}).get("crosstabs", {}).get("hba1c_in_window")
    if not ct:
        return None
    for r in ct["rows"]:
        if r["band"] == "no" and _ok(r.get("fn_share_true")) and _ok(r.get("positive_share_true")):
            return (
                float(r["fn_share_true"] / r["positive_share_true"]) if r["positive_share_true"] > 0 else None
            )
    return None


def findings(result: dict[str, Any]) -> list[str]:
    """Sentences stating what this run's numbers show (flags, gaps, shares)."""
    out: list[str] = []
    o = result["overall"]
    ot, orc = o["true"], o["recorded"]
    out.append(
        f"Against true labels the model reaches AUC {_f(ot['auc']['value'])} and AP {_f(ot['ap']['value'])} "
        f"(lift {_f(ot['ap_lift']['value'], 2)}× over prevalence {_pct(ot['prevalence']['value'])}); against "
        f"recorded labels AUC {_f(orc['auc']['value'])} and AP {_f(orc['ap']['value'])} "
        f"(prevalence {_pct(orc['prevalence']['value'])})."
    )
    d_auc = orc["auc"]["value"] - ot["auc"]["value"]
    if _ok(d_auc) and abs(d_auc) >= 0.005:
        word = "flatters" if d_auc > 0 else "understates"
        out.append(f"Recorded-label evaluation {word} discrimination by {_f(abs(d_auc))} AUC.")
    cg = calibration_gap(result)
    oe_t, oe_r = ot["oe"]["value"], orc["oe"]["value"]
    if _ok(cg["overall_gap"]):
        direction = "under-predicts" if oe_t > 1 else "over-predicts"
        out.append(
            f"Calibration gap: O/E is {_f(oe_r, 2)} against recorded labels but {_f(oe_t, 2)} against true "
            f"labels (gap {_f(cg['overall_gap'], 2)}); in truth the model {direction} risk overall."
        )
    if cg["worst"] is not None:
        w = cg["worst"]
        out.append(
            f"The recorded-vs-true calibration gap is largest for insurance = {w['level']} "
            f"(O/E {_f(w['oe_recorded'], 2)} recorded vs {_f(w['oe_true'], 2)} true; true prevalence "
            f"{_pct(w['prevalence_true'])} vs recorded {_pct(w['prevalence_recorded'])}): the label-noise "
            f"blind spot a real pipeline cannot see."
        )
    flagged = [s for s in result.get("slices", []) if s.get("flagged")]
    if flagged:
        for s in flagged:
            out.append(f"Flagged slice {s['slice']} = {s['level']}: " + "; ".join(s["flags"]) + ".")
    else:
        out.append(
            "No slice is flagged (O/E within bounds or its CI includes 1; |ΔAUC| within bounds or its paired CI "
            "includes 0)."
        )
    fp = result.get("error_analysis", {}).get("fp_decomposition", {})
    if fp.get("fp_recorded"):
        out.append(
            f"Of {fp['fp_recorded']} recorded-label false positives at τ, {fp['label_noise_fp']} "
            f"({_pct(fp['label_noise_share'])}) are label-noise FPs (true diabetes, coded later); "
            f"{fp['real_fp']} are real FPs."
        )
    dom = hba1c_fn_dominance(result)
    if dom is not None:
        out.append(
            f"Rows without an HbA1c in the window carry {_f(dom, 2)}× their share of true positives among "
            f"the false negatives."
        )
    orc_ = result.get("oracle", {})
    if _ok(orc_.get("expected_auc_oracle")) and _ok(orc_.get("expected_auc_model")):
        out.append(
            f"Oracle ceiling: expected AUC {_f(orc_['expected_auc_model'])} for the model vs "
            f"{_f(orc_['expected_auc_oracle'])} for p^A (expected-vs-expected gap "
            f"{_f(orc_['expected_auc_oracle'] - orc_['expected_auc_model'])}"
            + (
                f"; realised-vs-realised true-label AUC gap {_f(orc_['auc_gap_realised'])}"
                if _ok(orc_.get("auc_gap_realised"))
                else ""
            )
            + f"); Brier decomposes into oracle {_f(orc_['oracle_brier'], 4)} + excess "
            f"{_f(orc_['excess_brier'], 4)}."
        )
    pl_ = result.get("patient_level")
    if pl_:
        ks = sorted(int(k.split("_")[1]) for k in pl_ if k.startswith("sensitivity_"))
        if ks:
            s = pl_[f"sensitivity_{ks[-1]}"]
            out.append(
                f"Patient level: {_pct(s.get('value'))} of {pl_['n_case_patients']} onset patients are alerted "
                f"within {ks[-1]} years of onset and before coding (median lead over the recorded diagnosis "
                f"{_f(pl_['lead_time']['median'], 1)} years); {_pct(pl_['false_alarm_share']['value'])} of "
                f"never-onset patients are ever alerted."
            )
    return out


def recommendations(result: dict[str, Any]) -> list[str]:
    """Improvements chosen by rules over the numbers; each names the rule that fired."""
    recs: list[str] = []
    o = result["overall"]
    oe_t = o["true"]["oe"]["value"]
    fp = result.get("error_analysis", {}).get("fp_decomposition", {})
    noise = fp.get("label_noise_share")
    # O/E = observed/expected: < 1 means more risk predicted than observed, > 1 under-prediction.
    if _ok(oe_t) and _ok(noise) and oe_t > 1 / OE_UNDER and noise >= NOISE_FP_HIGH:
        recs.append(
            f"Fit the calibration map to expected true labels (labels.calibration_target=expected) or train "
            f"with E2 soft labels (labels.strategy=E2): true-label O/E is {_f(oe_t, 2)} (> "
            f"{_f(1 / OE_UNDER, 2)}, risk under-predicted) and {_pct(noise)} of recorded FPs are label noise "
            f"(≥ {_pct(NOISE_FP_HIGH, 0)})."
        )
    elif _ok(noise) and noise >= NOISE_FP_HIGH:
        recs.append(
            f"Report true-label metrics alongside recorded ones for threshold decisions: {_pct(noise)} of "
            f"recorded FPs are label noise, so recorded-label PPV understates the real yield."
        )
    if _ok(oe_t) and oe_t < OE_UNDER:
        recs.append(
            f"Recalibrate on validation (train.calibration=select chooses among none, logistic, beta and "
            f"isotonic on held-out data; or name one): true-label O/E {_f(oe_t, 2)} < "
            f"{OE_UNDER} means risk is over-predicted."
        )
    dom = hba1c_fn_dominance(result)
    if dom is not None and dom >= HBA1C_FN_DOMINANCE:
        recs.append(
            f"Add/keep LOCF + years-since-last HbA1c features and consider a longer window "
            f"(features.window_years): rows with no HbA1c in the window are {_f(dom, 2)}× over-represented "
            f"among false negatives (rule ≥ {HBA1C_FN_DOMINANCE})."
        )
    slope = o["true"]["cal_slope"]["value"]
    lo, hi = SLOPE_BOUNDS
    if _ok(slope) and not lo <= slope <= hi:
        kind = "over-fitted (too extreme)" if slope < lo else "under-fitted (too timid)"
        recs.append(
            f"Risks look {kind}: true-label calibration slope {_f(slope, 2)} outside [{lo}, {hi}]; "
            f"{'raise min_data_in_leaf / lower num_leaves' if slope < lo else 'allow more boosting rounds or leaves'}."
        )
    flagged = [s for s in result.get("slices", []) if s.get("flagged")]
    if flagged:
        names = ", ".join(f"{s['slice']}={s['level']}" for s in flagged[:5])
        recs.append(
            f"Investigate flagged slices ({names}): check per-slice calibration and consider slice-aware "
            f"recalibration or features that explain the slice's measurement/coding differences."
        )
    alert = o["recorded"]["alert_rate"]["value"]
    if _ok(alert) and alert > ALERT_RATE_HIGH:
        recs.append(
            f"Alert rate {_pct(alert)} exceeds {_pct(ALERT_RATE_HIGH, 0)} of patient-years: set "
            f"threshold.alert_capacity and report the net benefit lost."
        )
    orc = result.get("oracle", {})
    gap = (orc.get("expected_auc_oracle") or float("nan")) - (orc.get("expected_auc_model") or float("nan"))
    if _ok(gap) and gap > ORACLE_GAP_LARGE:
        recs.append(
            f"The expected-AUC gap to the oracle is {_f(gap)} (> {ORACLE_GAP_LARGE}): information is missing "
            f"at prediction time; richer utilisation/lab-trajectory features may close part of it."
        )
    if not recs:
        recs.append(
            "No rule fired: calibration, label noise, missing-data errors and slices are within bounds."
        )
    return recs


# --------------------------------------------------------------------------------------------- markdown


def _metrics_table(result: dict[str, Any]) -> list[str]:
    o = result["overall"]
    rows = [
        ("Prevalence", "prevalence"),
        ("ROC-AUC", "auc"),
        ("Average precision", "ap"),
        ("AP lift", "ap_lift"),
        ("Brier", "brier"),
        ("Scaled Brier", "scaled_brier"),
        ("Log loss", "log_loss"),
        ("O/E", "oe"),
        ("Calibration intercept (slope 1)", "cal_intercept"),
        ("Calibration slope", "cal_slope"),
        (f"Net benefit @ p_t={_f(result['p_t'], 2)}", "net_benefit"),
        ("Sensitivity @ τ", "sensitivity"),
        ("Specificity @ τ", "specificity"),
        ("PPV @ τ", "ppv"),
        ("NPV @ τ", "npv"),
        ("Alert rate @ τ", "alert_rate"),
    ]
    lines = ["| metric | vs recorded labels | vs true labels |", "|---|---|---|"]
    for label, k in rows:
        nd = 4 if k in ("brier", "net_benefit") else 3
        lines.append(f"| {label} | {_ci(o['recorded'][k], nd)} | {_ci(o['true'][k], nd)} |")
    cal = result.get("calibration", {})
    if cal:
        lines.append(f"| ICI (isotonic) | {_f(cal['recorded']['ici'], 4)} | {_f(cal['true']['ici'], 4)} |")
    return lines


def _top_k_table(result: dict[str, Any]) -> list[str]:
    """Lift/gains at top-k capacity fractions (only when the use case declares fractions)."""
    tk = result.get("top_k")
    if not tk:
        return []
    L = [
        "",
        "## Lift and gains at top-k",
        "",
        "The top ⌈f·n⌉ rows of each period are worked; counts are pooled over periods. Capture = expected "
        "positives in the model's lists / in the oracle's lists (true risk).",
        "",
        "| top f | rows worked | lift (recorded) | gains (recorded) | lift (true) | gains (true) "
        "| capture vs oracle |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec, tru in zip(tk.get("recorded", []), tk.get("true", []), strict=True):
        L.append(
            f"| {_pct(rec['fraction'])} | {rec['rows_worked']} | {_f(rec['lift'], 2)} | {_pct(rec['gains'])} "
            f"| {_f(tru['lift'], 2)} | {_pct(tru['gains'])} | {_f(tru.get('capture_vs_oracle'), 3)} |"
        )
    return L


def render_report(result: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """The Markdown report for one evaluation result (``plots`` maps plot name -> relative path)."""
    plots = plots or {}
    ci = round(100 * float(result.get("ci_level", 0.95)))
    L: list[str] = ["# clinrisk evaluation report", ""]
    L.append(
        f"Test split: {result['n_rows']} patient-years, {result['n_patients']} patients, years "
        f"{', '.join(str(y) for y in result.get('years', []))}. Threshold τ = {_f(result['tau'])} "
        f"(net-benefit p_t = {_f(result['p_t'], 2)}). {ci}% patient-cluster bootstrap CIs "
        f"(B = {result['bootstrap_replicates']})."
    )
    L += ["", "## Key findings", ""]
    L += [f"- {s}" for s in findings(result)]
    L += ["", "## Proposed improvements", ""]
    L += [f"{i}. {s}" for i, s in enumerate(recommendations(result), 1)]
    L += ["", "## Overall metrics", ""]
    L += _metrics_table(result)
    L += _top_k_table(result)
    L += _oracle_section(result)
    for name in PLOTS[:4]:
        if name in plots:
            L += ["", f"![{name}]({plots[name]})"]
    L += _patient_level_section(result)
    L += _slices_section(result, plots)
    L += _blind_spot_section(result)
    L += _error_analysis_section(result)
    L += _top_errors_section(result)
    L += [
        "",
        "---",
        "Definitions: O/E = Σy / Σp̂ (>1 = under-prediction); ICI = mean |p̂ − isotonic-smoothed observed|; "
        "expected AUC and excess Brier are label-draw-free (docs/science.md §1.9). Label-noise FPs are alerts "
        "with Y_rec = 0 but Y_true = 1.",
        "",
    ]
    return "\n".join(L)


def _oracle_section(result: dict[str, Any]) -> list[str]:
    """The oracle-ceiling table (tier A: the generator's p^A); none without an oracle."""
    L: list[str] = []
    orc = result.get("oracle", {})
    if orc:
        tl = orc.get("true_label_panel", {})
        L += [
            "",
            "## Oracle ceiling (tier A, p^A from the generator)",
            "",
            "| quantity | model | oracle p^A |",
            "|---|---|---|",
            f"| expected AUC vs p^A | {_f(orc['expected_auc_model'])} | {_f(orc['expected_auc_oracle'])} |",
            f"| true-label AUC | {_f(result['overall']['true']['auc']['value'])} | {_ci(tl.get('auc', {}))} |",
            f"| true-label AP | {_f(result['overall']['true']['ap']['value'])} | {_ci(tl.get('ap', {}))} |",
            f"| true-label Brier | {_f(result['overall']['true']['brier']['value'], 4)} | "
            f"{_ci(tl.get('brier', {}), 4)} |",
            f"| net benefit @ p_t | {_f(result['overall']['true']['net_benefit']['value'], 4)} | "
            f"{_ci(tl.get('net_benefit', {}), 4)} |",
            f"| oracle Brier E[p(1−p)] | | {_f(orc['oracle_brier'], 4)} |",
            "",
            "AUC gaps to the oracle, like for like (an expected AUC is never subtracted from a realised one):",
            "",
            "| gap (oracle − model) | AUC |",
            "|---|---|",
            f"| expected vs expected (both vs p^A, no label draw) | "
            f"{_f(orc['expected_auc_oracle'] - orc['expected_auc_model'])} |",
            f"| realised vs realised (both on the drawn true labels) | "
            f"{_f(orc.get('auc_gap_realised', float('nan')))} |",
            f"| excess Brier mean (p̂ − p^A)² | {_f(orc['excess_brier'], 4)} | 0 |",
        ]
    return L


def _patient_level_section(result: dict[str, Any]) -> list[str]:
    """Patient-level detection: sensitivity within k years, lead time, false alarms."""
    L: list[str] = []
    pl_ = result.get("patient_level")
    if pl_:
        L += [
            "",
            "## Patient-level detection (docs/science.md §2.4)",
            "",
            "| quantity | value |",
            "|---|---|",
        ]
        for k, v in pl_.items():
            if k.startswith("sensitivity_"):
                L.append(f"| {k.replace('_', ' within ')} years | {_ci(v)} |")
        lt = pl_["lead_time"]
        L.append(
            f"| lead time vs recorded diagnosis (median [IQR], n) | {_f(lt['median'], 1)} "
            f"[{_f(lt['q25'], 1)}, {_f(lt['q75'], 1)}], n = {lt['n']} |"
        )
        L.append(f"| never-onset patients ever alerted | {_ci(pl_['false_alarm_share'])} |")
        L.append(f"| alerts / 1000 patient-years | {_f(pl_['alerts_per_1000_patient_years'], 1)} |")
        L.append(
            f"| false alerts / 1000 patient-years | {_f(pl_['false_alerts_per_1000_patient_years'], 1)} |"
        )
    return L


def _slices_section(result: dict[str, Any], plots: dict[str, str]) -> list[str]:
    """The slice table, the dropped slices and the slice plot."""
    L: list[str] = []
    slices = result.get("slices", [])
    if slices:
        L += [
            "",
            "## Slices",
            "",
            "| slice | level | rows | patients | prev true | prev rec | AUC true | ΔAUC true vs all | "
            "AP true (lift) | O/E true | O/E rec | slope true | flagged |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in slices:
            t, r = s.get("true", {}), s.get("recorded", {})

            def g(d: dict[str, Any], k: str, nd: int = 3) -> str:
                return _ci(d[k], nd) if k in d else "n/a"

            lift = f" ({_f(t['ap_lift']['value'], 2)}×)" if "ap_lift" in t else ""
            L.append(
                f"| {s['slice']} | {s['level']} | {s['n_rows']} | {s['n_patients']} | "
                f"{_pct(t.get('prevalence', {}).get('value'))} | {_pct(r.get('prevalence', {}).get('value'))} | "
                f"{g(t, 'auc')} | {g(t, 'auc_diff')} | {g(t, 'ap')}{lift} | {g(t, 'oe', 2)} | {g(r, 'oe', 2)} | "
                f"{g(t, 'cal_slope', 2)} | {'**yes**' if s['flagged'] else 'no'} |"
            )
        dropped = result.get("slices_dropped", [])
        if dropped:
            L += [
                "",
                "Dropped slices: " + "; ".join(f"{d['slice']}={d['level']} ({d['reason']})" for d in dropped),
            ]
        if "slices" in plots:
            L += ["", f"![slices]({plots['slices']})"]
    return L


def _blind_spot_section(result: dict[str, Any]) -> list[str]:
    """The label-noise blind spot by insurance."""
    L: list[str] = []
    bs = result.get("label_noise_blind_spot", [])
    if bs:
        L += [
            "",
            "## Label-noise blind spot (insurance)",
            "",
            "| insurance | prev true | prev rec | O/E vs true | O/E vs recorded | gap |",
            "|---|---|---|---|---|---|",
        ]
        for r in bs:
            L.append(
                f"| {r['level']} | {_pct(r['prevalence_true'])} | {_pct(r['prevalence_recorded'])} | "
                f"{_f(r['oe_true'], 2)} | {_f(r['oe_recorded'], 2)} | {_f(r['gap'], 2)} |"
            )
    return L


def _error_analysis_section(result: dict[str, Any]) -> list[str]:
    """Error analysis at τ: the FP decomposition and the crosstabs by band."""
    L: list[str] = []
    ea = result.get("error_analysis", {})
    if ea:
        fp = ea["fp_decomposition"]
        L += [
            "",
            "## Error analysis at τ (docs/science.md §7)",
            "",
            f"Recorded-label FPs: {fp['fp_recorded']} = {fp['label_noise_fp']} label-noise "
            f"({_pct(fp['label_noise_share'])}) + {fp['real_fp']} real. FNs: {fp['fn_recorded']} vs recorded, "
            f"{fp['fn_true']} vs true labels.",
        ]
        for dim, ct in ea.get("crosstabs", {}).items():
            L += [
                "",
                f"### {dim} (column `{ct['column']}`)",
                "",
                "| band | rows | alert rate | FN true (rate) | FN share true | positive share true | FP rec | FP true |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in ct["rows"]:
                L.append(
                    f"| {r['band']} | {r['n_rows']} | {_pct(r['alert_rate'])} | {r['fn_true']} "
                    f"({_pct(r['fn_rate_true'])}) | {_pct(r['fn_share_true'])} | "
                    f"{_pct(r['positive_share_true'])} | {r['fp_rec']} | {r['fp_true']} |"
                )
    return L


def _top_errors_section(result: dict[str, Any]) -> list[str]:
    """The highest-risk false positives and lowest-risk false negatives, with SHAP."""
    L: list[str] = []
    te = result.get("top_errors", {})
    for name, rows in te.items():
        if not rows:
            continue
        title = "Highest-risk false positives" if name == "false_positives" else "Lowest-risk false negatives"
        L += ["", f"### {title} (vs recorded labels; top {min(len(rows), 10)} of {len(rows)} listed)", ""]
        L += [
            "| patient | year | p̂ | Y_true | top contributions (SHAP, raw margin) |",
            "|---|---|---|---|---|",
        ]
        for r in rows[:10]:
            contrib = ", ".join(f"{c['feature']} {c['shap']:+.2f}" for c in r.get("top_contributions", []))
            L.append(
                f"| {r['patient_id']} | {r['year']} | {_f(r['probability'])} | {r['eval_label_true']} | "
                f"{contrib or 'n/a'} |"
            )
    return L


# ------------------------------------------------------------------------------------------------ plots


def render_plots(result: dict[str, Any], plots_dir: Path) -> dict[str, Path]:
    """Write roc/pr/calibration/net_benefit/slices PNGs (matplotlib Agg) and return their paths."""
    import matplotlib.pyplot as plt

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, fig in plot_figures(result).items():
        path = plots_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out[name] = path
    return out


def plot_figures(result: dict[str, Any]) -> dict[str, Any]:
    """The report's matplotlib figures by plot name (Agg backend; the caller closes them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    figs: dict[str, Any] = {}
    colors = {"recorded": "tab:blue", "true": "tab:red"}

    o = result["overall"]
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, c in colors.items():
        roc = result["kfp"][name]["roc"]
        ax.plot(roc["fpr"], roc["tpr"], color=c, label=f"{name} labels (AUC {_f(o[name]['auc']['value'])})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    figs["roc"] = fig

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, c in colors.items():
        pr = result["pr_curve"][name]
        ax.step(
            pr["recall"],
            pr["precision"],
            where="post",
            color=c,
            label=f"{name} (AP {_f(o[name]['ap']['value'])})",
        )
        ax.axhline(o[name]["prevalence"]["value"], color=c, ls=":", lw=1)
    ax.set(xlabel="recall", ylabel="precision", title="Precision–recall (dotted: prevalence)", ylim=(0, 1))
    ax.legend(loc="upper right")
    figs["pr"] = fig

    fig, ax = plt.subplots(figsize=(5, 5))
    mx = 0.0
    for name, c in colors.items():
        cv = result["calibration"][name]["curve"]
        ax.plot(
            cv["mean_predicted"],
            cv["observed"],
            "o-",
            color=c,
            label=f"{name} (O/E {_f(o[name]['oe']['value'], 2)})",
        )
        mx = max(mx, *cv["mean_predicted"], *cv["observed"])
    ax.plot([0, mx], [0, mx], "k:", lw=1)
    ax.set(xlabel="mean predicted risk (decile)", ylabel="observed rate", title="Calibration")
    ax.legend(loc="upper left")
    figs["calibration"] = fig

    fig, ax = plt.subplots(figsize=(6, 4.5))
    nb = result["net_benefit_curve"]
    for name, c in colors.items():
        ax.plot(nb[name]["threshold"], nb[name]["model"], color=c, label=f"model vs {name}")
        ax.plot(
            nb[name]["threshold"], nb[name]["treat_all"], color=c, ls="--", lw=1, label=f"treat all ({name})"
        )
    if "net_benefit_curve" in result.get("oracle", {}):
        onb = result["oracle"]["net_benefit_curve"]
        ax.plot(onb["threshold"], onb["model"], color="gray", label="oracle p^A vs true")
    ax.axhline(0, color="k", lw=1, label="treat none")
    ax.axvline(result["p_t"], color="k", ls=":", lw=1, label=f"p_t = {_f(result['p_t'], 2)} (this run's)")
    top = max(max(nb["true"]["model"]), max(nb["recorded"]["model"]), 0.01)
    ax.set(
        xlabel="threshold probability p_t",
        ylabel="net benefit",
        title="Decision curve",
        ylim=(-0.01, top * 1.3),
    )
    ax.legend(fontsize=7)
    figs["net_benefit"] = fig

    slices = [s for s in result.get("slices", []) if "auc" in s.get("true", {})]
    fig, axes = plt.subplots(1, 2, figsize=(10, max(3.0, 0.35 * len(slices) + 1)))
    labels = [f"{s['slice']}={s['level']}" for s in slices]
    ypos = list(range(len(slices)))
    # Flagged slices are shaded rows with bold names: a colour of their own, never one of the two label series.
    flagged_rows = [i for i, s in enumerate(slices) if s.get("flagged")]
    for ax, metric, ref in ((axes[0], "auc", o["true"]["auc"]["value"]), (axes[1], "oe", None)):
        for i in flagged_rows:
            ax.axhspan(i - 0.45, i + 0.45, color=FLAGGED_SHADE, zorder=0)
        for name, c, off in (("true", colors["true"], -0.15), ("recorded", colors["recorded"], 0.15)):
            vals = [s[name][metric]["value"] if metric in s.get(name, {}) else math.nan for s in slices]
            lo = [s[name][metric]["lo"] if metric in s.get(name, {}) else math.nan for s in slices]
            hi = [s[name][metric]["hi"] if metric in s.get(name, {}) else math.nan for s in slices]
            err = [
                [max(v - a, 0) for v, a in zip(vals, lo, strict=True)],
                [max(b - v, 0) for v, b in zip(vals, hi, strict=True)],
            ]
            ax.errorbar(
                vals, [y + off for y in ypos], xerr=err, fmt="o", color=c, label=f"{name} labels", ms=4
            )
        ax.axvline(ref if ref is not None else 1.0, color="k", ls=":", lw=1)
        ax.set_yticks(ypos)
        ax.set_yticklabels(labels if metric == "auc" else [""] * len(labels), fontsize=7)
        ax.set_xlabel(
            {"auc": "AUC (dotted: overall, true labels)", "oe": "O/E (dotted: perfect = 1)"}[metric]
        )
        handles, names = ax.get_legend_handles_labels()
        if flagged_rows:
            handles.append(Patch(facecolor=FLAGGED_SHADE, edgecolor="none"))
            names.append("flagged slice")
        ax.legend(handles, names, fontsize=7)
    for i in flagged_rows:
        axes[0].get_yticklabels()[i].set_fontweight("bold")
    fig.suptitle("Slices: true (red) vs recorded (blue) labels; shaded rows = flagged")
    figs["slices"] = fig
    return figs


# ----------------------------------------------------------------------------- self-contained renderings
# A report viewed anywhere but its own folder (MLflow's artefact viewer, the Kubeflow UI's Markdown/HTML
# visualisation, a copied file) cannot resolve ``plots/roc.png``, and a container path means nothing in a
# browser. So the copies meant for those viewers carry their images as data URIs.


def inline_images(markdown_text: str, base_dir: Path) -> str:
    """``markdown_text`` with every relative image link replaced by a data URI of the file under
    ``base_dir``; a missing or unsupported file is a ValueError naming it (a report must not show a
    broken image)."""
    base = Path(base_dir).resolve()

    def data_uri(match: re.Match[str]) -> str:
        src = match.group("src")
        path = (base / src).resolve()
        if not path.is_relative_to(base):
            raise ValueError(f"{src}: image link leaves the report folder {base}")
        kind = _IMAGE_TYPES.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"{src}: unsupported image type {path.suffix!r}")
        if not path.is_file():
            raise ValueError(f"{path}: image linked by the report not found")
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{match.group('alt')}](data:{kind};base64,{encoded})"

    return _RELATIVE_IMAGE.sub(data_uri, markdown_text)


_HTML_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem auto;
       max-width: 1100px; padding: 0 1rem; color: #1f2328; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; }
th { background: #f6f8fa; }
img { max-width: 100%; height: auto; display: block; margin: 0.8rem 0; }
code { background: #f6f8fa; padding: 0 3px; border-radius: 3px; }
"""


def markdown_to_html(markdown_text: str, title: str) -> str:
    """A standalone HTML page for a Markdown report (tables enabled; raw HTML in the text is escaped)."""
    from markdown_it import MarkdownIt

    # "js-default" = CommonMark + tables/strikethrough with raw HTML off: report text is data, not markup.
    md = MarkdownIt("js-default")
    # Its default link check keeps data:image/{png,jpeg,gif,webp} URIs and drops javascript:/vbscript:/file:.
    body = md.render(markdown_text)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_HTML_STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def self_contained_markdown(report_md: Path) -> str:
    """The Markdown report at ``report_md`` with its images inlined (for single-file viewers)."""
    report_md = Path(report_md)
    return inline_images(report_md.read_text(), report_md.parent)


def write_report_html(report_md: Path, title: str = "clinrisk evaluation report") -> Path:
    """Write ``report.html`` (images inlined) beside ``report_md``; returns its path."""
    report_md = Path(report_md)
    out = report_md.parent / REPORT_HTML
    out.write_text(markdown_to_html(self_contained_markdown(report_md), title))
    return out
