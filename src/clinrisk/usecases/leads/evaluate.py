"""Lead-conversion evaluation: lift and gains at top-k (sales capacity), against labels and the truth.

A sales team works the top ``k = ceil(f * n)`` open leads of each snapshot (``n`` = open leads that snapshot,
``f`` a capacity fraction). Per fraction, pooled over snapshots:

- ``precision``: converted leads among those worked; ``lift``: precision / base rate;
- ``gains``: share of all conversions that were in the worked lists;
- with the generator's truth ``p_true``: expected conversions in the lists, the same for the oracle's lists
  (the top-k by ``p_true``), and their ratio ``capture_vs_oracle`` (1 = as good as knowing the truth).

Ties in the score are broken by ID so the lists, hence the numbers, are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from clinrisk.metrics import average_precision, brier, expected_auc, roc_auc, top_k_lift_gains

__all__ = ["evaluate_leads", "slice_table", "top_k_table"]


# The shared metric's names, in sales words (a row is a lead, a positive a conversion).
_SALES_NAMES = {
    "rows_worked": "leads_worked",
    "positives": "conversions",
    "expected_positives": "expected_conversions",
    "oracle_expected_positives": "oracle_expected_conversions",
}


def top_k_table(
    df: pl.DataFrame,
    fractions: Sequence[float],
    *,
    score: str = "score",
    label: str = "LABEL",
    truth: str | None = "P_TRUE",
    group: str = "SNAPSHOT",
) -> list[dict[str, Any]]:
    """Lift/gains per capacity fraction (see the module doc; computed by
    :func:`clinrisk.metrics.top_k_lift_gains`). ``df`` has ID, ``group``, ``score``, ``label`` and
    optionally ``truth``."""
    rows = top_k_lift_gains(df, fractions, score=score, label=label, group=group, entity="ID", truth=truth)
    return [{_SALES_NAMES.get(k, k): v for k, v in r.items()} for r in rows]


def slice_table(
    df: pl.DataFrame, column: str, *, score: str = "score", label: str = "LABEL", min_rows: int = 50
) -> list[dict[str, Any]]:
    """Per level of ``column`` (null as ``"(missing)"``): rows, conversions, mean score vs observed rate,
    AUC and AP (NaN when a class is absent or the slice is under ``min_rows``)."""
    key = pl.col(column).cast(pl.String).fill_null("(missing)")
    out: list[dict[str, Any]] = []
    for (level,), part in (
        df.with_columns(key.alias("_level")).sort("_level").group_by("_level", maintain_order=True)
    ):
        y = part.get_column(label).to_numpy().astype(np.float64)
        p = part.get_column(score).to_numpy().astype(np.float64)
        small = part.height < min_rows
        out.append(
            {
                "column": column,
                "level": level,
                "rows": part.height,
                "conversions": int(y.sum()),
                "observed_rate": float(y.mean()),
                "mean_score": float(p.mean()),
                "auc": math.nan if small else roc_auc(y, p),
                "ap": math.nan if small else average_precision(y, p),
            }
        )
    return out


def evaluate_leads(
    df: pl.DataFrame,
    fractions: Sequence[float],
    slices: Sequence[str],
    *,
    score: str = "score",
    label: str = "LABEL",
    truth: str | None = "P_TRUE",
    min_slice_rows: int = 50,
) -> dict[str, Any]:
    """Headline metrics, top-k table and slices of scored prediction rows (pure)."""
    y = df.get_column(label).to_numpy().astype(np.float64)
    p = df.get_column(score).to_numpy().astype(np.float64)
    result: dict[str, Any] = {
        "rows": df.height,
        "snapshots": df.get_column("SNAPSHOT").n_unique(),
        "base_rate": float(y.mean()) if y.size else math.nan,
        "auc": roc_auc(y, p),
        "ap": average_precision(y, p),
        "brier": brier(y, p),
    }
    if truth is not None and truth in df.columns:
        t = df.get_column(truth).to_numpy().astype(np.float64)
        result |= {
            "expected_auc_model": expected_auc(p, t),
            "expected_auc_oracle": expected_auc(t, t),
            "excess_brier": float(np.mean((p - t) ** 2)),
            "mean_p_true": float(t.mean()),
        }
    result["top_k"] = top_k_table(df, fractions, score=score, label=label, truth=truth)
    result["slices"] = [
        row
        for c in slices
        if c in df.columns
        for row in slice_table(df, c, score=score, label=label, min_rows=min_slice_rows)
    ]
    return result
