"""Browser tier: a real headless Chromium shows the evaluation report with its images loaded, in a real
MLflow UI (``mlflow server`` on 127.0.0.1) over a finished tiny pipeline run, and as the Kubeflow UI's HTML
artefact. Needs Debian's chromium (``make test-ui`` installs it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clinrisk.pipeline_runner import LocalRunResult, run_local
from clinrisk.report import PLOTS
from clinrisk.stages.catalog import Catalog
from tests.ui.browser import Browser, chromium_binary
from tests.ui.mlflow_ui import MlflowUi

pytestmark = [
    pytest.mark.ui,
    # A tiny pipeline run + an MLflow server start: minutes on a busy 2-core machine, beyond the suite's 900 s.
    pytest.mark.timeout(2700),
    pytest.mark.skipif(chromium_binary() is None, reason="chromium not installed (make test-ui installs it)"),
]

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "generate.n_patients=2000",
    "generate.block_size=1000",
    "select.rounds=2",
    "train.num_boost_round=60",
    "evaluate.bootstrap_replicates=10",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> LocalRunResult:
    out = tmp_path_factory.mktemp("ui-run")
    return run_local(REPO / "configs/clinical/tiny.yaml", [f"run.output_dir={out}", *FAST])


def _mlflow_ids(result: LocalRunResult) -> tuple[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result.tracking_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run.info.experiment_id, run.info.run_id


def test_mlflow_ui_shows_the_report_with_every_image(finished_run: LocalRunResult, tmp_path: Path) -> None:
    exp_id, run_id = _mlflow_ids(finished_run)
    with MlflowUi(finished_run.tracking_uri, tmp_path / "mlflow-ui.log") as ui, Browser() as browser:
        browser.navigate(ui.artifact_page(exp_id, run_id, "evaluation/report.html"))
        frame = browser.wait_for_report_images(min_images=len(PLOTS))
        assert len(frame.images) == len(PLOTS)
        assert all(i["src"].startswith("data:image/png;base64,") for i in frame.images)
        assert all(i["width"] >= 300 for i in frame.images)  # decoded pictures, not broken-image icons
        assert "report.html" in browser.text()  # the artefact browser, not some other page
        shot = browser.screenshot(tmp_path / "mlflow-report.png")
        assert shot.stat().st_size > 20_000


def test_kfp_artifacts_carry_their_images(finished_run: LocalRunResult, tmp_path: Path) -> None:
    """The Markdown and HTML artefacts the Kubeflow UI shows are single files: no path may point elsewhere."""
    outputs = Catalog.for_kfp_run(finished_run.pipeline_dir)  # the per-step or the local fused layout
    md = outputs.path("report_md").read_text()
    assert len(re.findall(r"!\[[^\]]*\]\(data:image/png;base64,", md)) == len(PLOTS)
    assert str(finished_run.run_root) not in md and "](plots/" not in md and "](/" not in md
    # The Kubeflow UI serves the HTML artefact (a file without an extension locally) as text/html.
    page = tmp_path / "kfp-report.html"
    page.write_bytes(outputs.path("report_html").read_bytes())
    with Browser() as browser:
        browser.navigate(page.as_uri())
        frame = browser.wait_for_report_images(min_images=len(PLOTS))
        assert len(frame.images) == len(PLOTS)
