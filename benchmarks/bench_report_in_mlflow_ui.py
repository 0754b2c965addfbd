"""Benchmark: from starting `make run` to an MLflow UI page showing the evaluation report with its images.

One measurement (a run takes minutes, so no repeats): `clinrisk run` (what `make run` calls) on a config
into a fresh output folder, then a real `mlflow server` on 127.0.0.1 over the run's store, then headless
Chromium opening the run's `evaluation/report.html` artefact page until every report image has loaded.
Prints the seconds of each phase and the total. Needs Debian's chromium (scripts/ui/install-chromium.sh).

    .venv/bin/python benchmarks/bench_report_in_mlflow_ui.py [--config configs/clinical/tiny.yaml]
        [--screenshot docs/images/mlflow-report.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the browser + MLflow UI helpers of the browser test tier

from tests.ui.browser import Browser, chromium_binary  # noqa: E402
from tests.ui.mlflow_ui import MlflowUi  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/clinical/tiny.yaml")
    ap.add_argument("--screenshot", type=Path, default=None, help="save the page as PNG here")
    args = ap.parse_args()
    if chromium_binary() is None:
        print("SKIPPED: no chromium (scripts/ui/install-chromium.sh installs Debian's)")
        return
    from mlflow.tracking import MlflowClient

    from clinrisk.report import PLOTS

    out = Path(tempfile.mkdtemp(prefix="clinrisk-bench-ui-"))
    try:
        measure(args.config, args.screenshot, out, len(PLOTS), MlflowClient)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def measure(config: str, screenshot: Path | None, out: Path, n_images: int, client_cls: type) -> None:
    clinrisk = Path(sys.executable).with_name("clinrisk")
    t0 = time.perf_counter()
    subprocess.run(
        [str(clinrisk), "run", "--config", config, "--set", f"run.output_dir={out}"],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t_run = time.perf_counter()
    (db,) = out.glob("*/mlflow/mlflow.db")
    uri = f"sqlite:///{db}"
    client = client_cls(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    with MlflowUi(uri, out / "mlflow-ui.log") as ui:
        t_ui = time.perf_counter()
        with Browser() as browser:
            browser.navigate(
                ui.artifact_page(run.info.experiment_id, run.info.run_id, "evaluation/report.html")
            )
            browser.wait_for_report_images(min_images=n_images)
            t_page = time.perf_counter()
            if screenshot is not None:
                browser.screenshot(screenshot)
    print(f"config                        {config}")
    print(f"clinrisk run (make run)       {t_run - t0:8.1f} s")
    print(f"mlflow server up              {t_ui - t_run:8.1f} s")
    print(f"report page, images loaded    {t_page - t_ui:8.1f} s")
    print(f"total: make run -> report     {t_page - t0:8.1f} s")


if __name__ == "__main__":
    main()
