"""`clinrisk generate` prints each use case's own manifest fields: the leads manifest has a ``prevalence``
too (a plain share, not the clinical per-horizon block), which must not send it down the clinical branch."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from clinrisk.cli.app import build_app

REPO = Path(__file__).resolve().parents[2]


def test_generate_leads_prints_its_own_fields(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        build_app(),
        [
            "generate", "--usecase", "leads", "--config", str(REPO / "configs/leads/tiny.yaml"),
            "--set", "params.generate.n_companies=200", "--set", "params.generate.companies_per_shard=100",
            "--set", "params.generate.n_weeks=12", "--set", "params.generate.signup_weeks=6",
            "--workers", "1", "--no-progress", "--out", str(tmp_path / "raw"),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "(use case leads)" in res.output and "observed hash" in res.output
    assert "alpha=" not in res.output and "Traceback" not in res.output
