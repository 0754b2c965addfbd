"""Benchmark: the lead-conversion use case end to end at ~1M usage rows, stage by stage, in one process.

Stages: generate (every shard of the plan) -> write the three CSV files and ingest them back (the real-export
path) -> validate (per shard, quarantine) -> features + truth (per shard) -> LightGBM on the train split ->
lift/gains on the test split against the generator's truth. Prints wall time per stage, the peak RSS seen
after each stage (ru_maxrss: monotone, so the stage where it jumps is the one that set it), and the model's
quality next to the oracle's. One run: the machine these numbers come from is shared and loaded, so read
them as orders of magnitude, not as a regression gate.

    .venv/bin/python benchmarks/bench_leads.py                      # 34,000 companies ~ 1.0M usage rows
    .venv/bin/python benchmarks/bench_leads.py --companies 3000     # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--companies", type=int, default=34_000)
    ap.add_argument("--config", default=str(REPO / "configs/leads/default.yaml"))
    args = ap.parse_args()

    import lightgbm as lgb
    import numpy as np
    import polars as pl

    from clinrisk.config import load_config
    from clinrisk.feature_table import categorical_features, feature_matrix
    from clinrisk.usecases import get
    from clinrisk.usecases.leads.evaluate import evaluate_leads
    from clinrisk.usecases.leads.generator import LeadsData, write_csvs

    cfg = load_config(Path(args.config), [f"params.generate.n_companies={args.companies}"])
    leads = get("leads")
    stages: list[dict[str, Any]] = []

    def stage(name: str, t0: float, **extra: Any) -> None:
        stages.append(
            {
                "stage": name,
                "wall_s": round(time.perf_counter() - t0, 2),
                "peak_rss_mb": round(_peak_rss_mb()),
                **extra,
            }
        )

    start = time.perf_counter()
    t = time.perf_counter()
    plan = leads.source.plan(cfg)
    shards = [leads.source.generate_shard(cfg, plan, s) for s in range(plan["n_shards"])]
    usage_rows = sum(r.tables["usage_actions"].height for r in shards)
    stage("generate", t, shards=plan["n_shards"], usage_rows=usage_rows)

    with tempfile.TemporaryDirectory(prefix="bench_leads_") as tmp:
        t = time.perf_counter()
        whole = {k: pl.concat([r.tables[k] for r in shards]) for k in leads.source.tables}
        write_csvs(
            LeadsData(whole["customers"], whole["noncustomers"], whole["usage_actions"], shards[0].truth),
            Path(tmp),
        )  # type: ignore[arg-type]
        del whole
        stage("write_csv", t)
        t = time.perf_counter()
        ingested = {k: v.collect() for k, v in leads.source.ingest(cfg, Path(tmp)).items()}
        stage("ingest_csv", t, rows=sum(v.height for v in ingested.values()))
        del ingested

    t = time.perf_counter()
    valid = [leads.schema.validate(cfg, r, i) for i, r in enumerate(shards)]
    stage("validate", t, quarantined=sum(v.stats["rows_quarantined"] for v in valid))

    t = time.perf_counter()
    train_tables = {k: pl.concat([v.tables[k] for v in valid]).lazy() for k in leads.source.tables}
    spec = leads.features.fit_spec(cfg, train_tables)
    tables = [
        leads.features.build(
            cfg,
            {k: f.lazy() for k, f in v.tables.items()},
            spec,
            r.truth.lazy() if r.truth is not None else None,
        ).collect()
        for v, r in zip(valid, shards, strict=True)
    ]
    table = pl.concat(tables)
    del tables
    stage("features+truth", t, prediction_rows=table.height, features=len(spec.feature_names))

    t = time.perf_counter()
    train = table.filter(pl.col("split") == "train")
    val = table.filter(pl.col("split") == "validation")
    test = table.filter(pl.col("split") == "test")
    params = {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 100,
        "seed": 7,
        "deterministic": True,
        "verbose": -1,
        "num_threads": 2,
    }
    cats = categorical_features(spec)
    dtrain = lgb.Dataset(
        feature_matrix(train, spec),
        train["label"].to_numpy(),
        feature_name=spec.feature_names,
        categorical_feature=cats,
    )
    dval = lgb.Dataset(feature_matrix(val, spec), val["label"].to_numpy(), reference=dtrain)
    booster = lgb.train(
        params, dtrain, 1000, valid_sets=[dval], callbacks=[lgb.early_stopping(30, verbose=False)]
    )
    stage("train_lightgbm", t, train_rows=train.height, trees=booster.best_iteration)

    t = time.perf_counter()
    scored = test.select(
        pl.col("patient_id").alias("ID"),
        pl.col("year").alias("SNAPSHOT"),
        pl.col("label_rec").alias("LABEL"),
        pl.col("eval_oracle_risk").cast(pl.Float64).alias("P_TRUE"),
        pl.Series(
            "score",
            booster.predict(feature_matrix(test, spec), num_iteration=booster.best_iteration).astype(
                np.float64
            ),
        ),
        "INDUSTRY_GROUP",
        "EMPLOYEE_RANGE",
    )
    result = evaluate_leads(scored, list(leads.labels.top_k_fractions), list(leads.labels.slices))
    stage("evaluate", t, test_rows=test.height)
    total = round(time.perf_counter() - start, 2)

    print(f"{'stage':<16}{'wall_s':>9}{'peak_rss_mb':>13}  details")
    for s in stages:
        extra = {k: v for k, v in s.items() if k not in ("stage", "wall_s", "peak_rss_mb")}
        print(f"{s['stage']:<16}{s['wall_s']:>9.2f}{s['peak_rss_mb']:>13}  {json.dumps(extra)}")
    print(f"{'total':<16}{total:>9.2f}{round(_peak_rss_mb()):>13}")
    print(
        f"test: AUC {result['auc']:.3f}, AP {result['ap']:.3f}; expected AUC model {result['expected_auc_model']:.3f} "
        f"vs oracle {result['expected_auc_oracle']:.3f}; base rate {result['base_rate']:.4f}"
    )
    for r in result["top_k"]:
        print(
            f"top {r['fraction']:>5.0%}: lift {r['lift']:5.2f}  gains {r['gains']:.3f}  "
            f"capture vs oracle {r['capture_vs_oracle']:.3f}"
        )
    print(
        f"usage rows per second (generate -> features, excl. CSV and training): {usage_rows / sum(s['wall_s'] for s in stages if s['stage'] in ('generate', 'validate', 'features+truth')):,.0f}"
    )


if __name__ == "__main__":
    main()
