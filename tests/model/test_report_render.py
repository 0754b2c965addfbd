"""Reports that render anywhere (images inlined as data URIs, a standalone HTML page) and readable plots."""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path

import matplotlib.colors as mcolors
import pytest

from clinrisk.config import EvaluateConfig
from clinrisk.evaluate import evaluate_predictions
from clinrisk.report import (
    FLAGGED_SHADE,
    PLOTS,
    inline_images,
    markdown_to_html,
    plot_figures,
    render_plots,
    render_report,
    write_report_html,
)
from tests.model.eval_synth import synth_test_frame

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result() -> dict:
    df, p = synth_test_frame(n_patients=900, seed=2)
    return evaluate_predictions(
        EvaluateConfig(bootstrap_replicates=20, top_k_errors=3), df, p, tau=0.1, p_t=0.1, seed=0
    )


@pytest.fixture(scope="module")
def report_dir(result: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("report")
    plots = render_plots(result, d / "plots")
    (d / "report.md").write_text(render_report(result, {k: f"plots/{v.name}" for k, v in plots.items()}))
    return d


def _data_uris(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)]


def test_inlined_markdown_carries_every_plot_and_no_path(report_dir: Path) -> None:
    md = inline_images((report_dir / "report.md").read_text(), report_dir)
    images = _data_uris(md)
    assert len(images) == len(PLOTS)
    assert all(img.startswith(PNG) for img in images)
    assert "plots/" not in md and str(report_dir) not in md
    # Exactly the bytes of the files: nothing re-encoded.
    assert set(images) == {(report_dir / "plots" / f"{n}.png").read_bytes() for n in PLOTS}


def test_html_page_is_standalone(report_dir: Path) -> None:
    page = write_report_html(report_dir / "report.md").read_text()
    assert page.startswith("<!DOCTYPE html>")
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == len(PLOTS) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<table>" in page  # GFM tables rendered, not left as pipes
    assert "plots/" not in page


def test_broken_image_links_are_errors_not_broken_pictures(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        inline_images("![roc](plots/roc.png)", tmp_path)
    with pytest.raises(ValueError, match="leaves the report folder"):
        inline_images("![x](../secret.png)", tmp_path / "sub")
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match="unsupported image type"):
        inline_images("![x](a.gif)", tmp_path)
    # Absolute URLs and existing data URIs are left alone.
    text = "![x](https://example.org/x.png) ![y](data:image/png;base64,AAAA)"
    assert inline_images(text, tmp_path) == text


def test_report_text_cannot_inject_markup() -> None:
    page = markdown_to_html("# t\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1))", "t")
    assert "<script>" not in page and "&lt;script&gt;" in page  # shown as text
    assert 'href="javascript:' not in page


def test_decision_curve_labels_the_p_t_line(result: dict) -> None:
    figs = plot_figures(result)
    try:
        labels = figs["net_benefit"].axes[0].get_legend_handles_labels()[1]
        assert f"p_t = {result['p_t']:.2f} (this run's)" in labels
    finally:
        import matplotlib.pyplot as plt

        for f in figs.values():
            plt.close(f)


def test_slices_chart_marks_flagged_slices_apart_from_the_label_series(result: dict) -> None:
    import matplotlib.pyplot as plt

    res = copy.deepcopy(result)
    slices = [s for s in res["slices"] if "auc" in s.get("true", {})]
    assert len(slices) > 1
    for s in res["slices"]:
        s["flagged"] = False
    slices[0]["flagged"] = True
    figs = plot_figures(res)
    try:
        fig = figs["slices"]
        title = fig._suptitle.get_text()
        assert "red = flagged" not in title and "shaded" in title
        ax = fig.axes[0]
        handles, _ = ax.get_legend_handles_labels()
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == ["true labels", "recorded labels", "flagged slice"], legend
        series = {mcolors.to_hex(h.lines[0].get_color()) for h in handles}
        assert mcolors.to_hex(FLAGGED_SHADE) not in series
        # Tick labels are no longer coloured red (red is the true-label series); flagged ones are bold.
        ticks = ax.get_yticklabels()
        assert {mcolors.to_hex(t.get_color()) for t in ticks} == {mcolors.to_hex("black")}
        names = [f"{s['slice']}={s['level']}" for s in slices]
        bold = {t.get_text() for t in ticks if t.get_fontweight() == "bold"}
        assert bold == {names[0]}
    finally:
        for f in figs.values():
            plt.close(f)
