"""Promotion gate: decisions on constructed metric sets, and the MLflow alias flow on real bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinrisk.config.monitoring import PromotionConfig
from clinrisk.errors import DataError
from clinrisk.promotion import KEEP, PROMOTE, decide, metrics_from_section

CHAMP = {"ap": 0.50, "brier": 0.050, "net_benefit": 0.030, "calibration_error": 0.05, "slice_auc_gap": 0.02}
PC = PromotionConfig()


def test_win() -> None:
    d = decide({**CHAMP, "ap": 0.52, "brier": 0.0502}, CHAMP, PC)
    assert d["decision"] == PROMOTE and d["primary"]["won"]
    assert all(g["passed"] for g in d["guards"])
    assert "latency_p95_ms" in d["skipped"]


def test_lose_on_primary_and_on_guard() -> None:
    d = decide({**CHAMP, "ap": 0.49}, CHAMP, PC)
    assert d["decision"] == KEEP and "does not exceed" in d["reason"]
    # wins on AP but Brier worsens by 0.002 > tolerance 0.0005
    g = decide({**CHAMP, "ap": 0.55, "brier": 0.052}, CHAMP, PC)
    assert g["decision"] == KEEP
    failed = [x["metric"] for x in g["guards"] if not x["passed"]]
    assert failed == ["brier"] and "guard brier" in g["reason"]
    # latency guard counts once measured on both sides
    lat = decide({**CHAMP, "ap": 0.55, "latency_p95_ms": 90.0}, {**CHAMP, "latency_p95_ms": 50.0}, PC)
    assert lat["decision"] == KEEP and "latency_p95_ms" in lat["reason"]


def test_tie_keeps_champion_and_min_gain() -> None:
    assert decide(dict(CHAMP), CHAMP, PC)["decision"] == KEEP
    assert "tie" in decide(dict(CHAMP), CHAMP, PC)["reason"]
    strict = PromotionConfig(min_primary_gain=0.01)
    assert decide({**CHAMP, "ap": 0.505}, CHAMP, strict)["decision"] == KEEP
    # primary = brier: lower is better
    pb = PromotionConfig(primary="brier", guards={"ap": 0.01})
    assert decide({**CHAMP, "brier": 0.049}, CHAMP, pb)["decision"] == PROMOTE


def test_missing_champion_and_bad_metrics() -> None:
    d = decide(dict(CHAMP), None, PC)
    assert d["decision"] == PROMOTE and d["first_deployment"]
    with pytest.raises(DataError, match="primary"):
        decide({"brier": 0.1}, CHAMP, PC)
    with pytest.raises(ValueError, match="unknown metric"):
        PromotionConfig(primary="accuracy")
    m = metrics_from_section({"ap": 0.4, "oe": 1.0, "brier": float("nan")}, {"net_benefit": 0.01})
    assert m == {"ap": 0.4, "calibration_error": 0.0, "net_benefit": 0.01}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_registry_flow(trained_bundle_dir: Path, synthetic_features_dir: Path, tmp_path: Path) -> None:
    """First deployment → champion; a weaker challenger (no HbA1c features) is refused; both recorded."""
    from clinrisk import registry, tracking
    from clinrisk.promotion import run_promotion
    from clinrisk.train import train_model
    from tests.model.conftest import small_config

    cfg = small_config(tmp_path)
    run1 = tracking.start_run(cfg)
    registry.register_bundle(cfg, trained_bundle_dir, run1)
    first = run_promotion(cfg, features_dir=synthetic_features_dir)
    assert first["gate"]["decision"] == PROMOTE and first["gate"]["first_deployment"]
    assert first["champion_after"] == first["challenger_version"] == "1"

    weak = tmp_path / "weak"
    keep = ["age", "sex", "insurance", "bmi", "visits", "ldl_mean_3y"]
    train_model(cfg, synthetic_features_dir, weak, selected_features=keep)
    run2 = tracking.start_run(cfg)
    registry.register_bundle(cfg, weak, run2)
    second = run_promotion(cfg, features_dir=synthetic_features_dir)
    assert second["gate"]["decision"] == KEEP
    assert second["champion_after"] == "1"
    assert second["challenger_metrics"]["ap"] < second["champion_metrics"]["ap"]
    assert "validation split" in second["basis"]
    assert second["paired_bootstrap_challenger_minus_champion"]["ap"]["hi"] < 0
    rec = json.loads((Path(second["record_dir"]) / "decision.json").read_text())
    assert rec["gate"]["decision"] == KEEP
    assert "Promotion gate: keep_champion" in (Path(second["record_dir"]) / "decision.md").read_text()
    client = tracking.mlflow_client()
    name = cfg.tracking.registered_model_name
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert client.get_model_version(name, "2").tags["gate_decision"] == KEEP
    assert client.get_run(run2).data.metrics["gate.promoted"] == 0.0
