"""`clinrisk evaluate`: test-split evaluation of a model bundle (thin wrapper over clinrisk.evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clinrisk.cli.common import ConfigOption, SetOption, handle_errors, load, output_dir

BundleOption = Annotated[
    Path | None, typer.Option("--bundle", help="model bundle dir (default: run's bundle/)")
]
FeaturesOption = Annotated[
    Path | None, typer.Option("--features", help="features dataset dir (default: run's features/)")
]
OutOption = Annotated[Path | None, typer.Option("--out", help="output dir (default: run's evaluation/)")]


@handle_errors
def evaluate(
    config: ConfigOption = None,
    sets: SetOption = None,
    bundle: BundleOption = None,
    features: FeaturesOption = None,
    out: OutOption = None,
) -> None:
    """Evaluate the bundle on the test split against recorded and true labels; write metrics, plots, report."""
    from clinrisk.paths import RunPaths
    from clinrisk.stages import Catalog
    from clinrisk.stages import evaluate as evaluate_stage

    cfg = load(config, sets)
    io = Catalog.for_run(
        RunPaths.for_config(cfg).root, model_bundle=bundle, features=features, evaluation=out
    )
    out_dir = output_dir(io.path("evaluation"))
    io = io.with_paths(evaluation=out_dir)
    result = evaluate_stage.run(cfg, io)
    typer.echo(format_headline(result))
    typer.echo(f"wrote {out_dir}/metrics.json, report.md, plots/, predictions.parquet")


def format_headline(result: dict[str, object]) -> str:
    """Two-column headline table (recorded vs true labels) plus the oracle and error-analysis numbers."""
    from clinrisk.evaluate import HEADLINE_METRICS

    h = result["headline"]
    assert isinstance(h, dict)

    def f(x: object, nd: int = 3) -> str:
        return "n/a" if x is None else f"{float(x):.{nd}f}"  # type: ignore[arg-type]

    lines = [
        f"test rows {result['n_rows']}, patients {result['n_patients']}, tau {f(result['tau'])}",
        f"{'metric':<14}{'recorded':>10}{'true':>10}",
    ]
    for k in HEADLINE_METRICS:
        nd = 4 if k in ("brier", "net_benefit") else 3
        lines.append(f"{k:<14}{f(h.get(f'recorded_{k}'), nd):>10}{f(h.get(f'true_{k}'), nd):>10}")
    lines.append(
        f"expected AUC model {f(h.get('expected_auc_model'))} vs oracle {f(h.get('expected_auc_oracle'))}; "
        f"excess Brier {f(h.get('excess_brier'), 4)}"
    )
    lines.append(
        f"label-noise FP share {f(h.get('label_noise_fp_share'))}; flagged slices {int(h.get('n_flagged_slices') or 0)}"
    )
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("evaluate")(evaluate)
