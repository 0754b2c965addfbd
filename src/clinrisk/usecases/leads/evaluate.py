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

from clinrisk.metrics import average_precision, brier, expected_auc, roc_auc

__all__ = ["evaluate_leads", "slice_table", "top_k_table"]


def _ranked(df: pl.DataFrame, score: str, group: str) -> pl.DataFrame:
    return df.sort(group, score, "ID", descending=[False, True, False]).with_columns(
        pl.int_range(1, pl.len() + 1).over(group).alias("_rank"),
        pl.len().over(group).alias("_n"),
    )


def top_k_table(
    df: pl.DataFrame,
    fractions: Sequence[float],
    *,
    score: str = "score",
    label: str = "LABEL",
    truth: str | None = "P_TRUE",
    group: str = "SNAPSHOT",
) -> list[dict[str, Any]]:
    """Lift/gains per capacity fraction (see the module doc). ``df`` has ID, ``group``, ``score``,
    ``label`` and optionally ``truth``."""
    if df.height == 0:
        return []
    has_truth = truth is not None and truth in df.columns
    model = _ranked(df, score, group)
    oracle = _ranked(df, truth, group) if has_truth and truth is not None else None
    total_pos = float(df.get_column(label).sum())
    base = total_pos / df.height
    out: list[dict[str, Any]] = []
    for f in fractions:
        k = pl.max_horizontal((pl.col("_n") * f).ceil().cast(pl.Int64), pl.lit(1))
        top = model.filter(pl.col("_rank") <= k)
        pos = float(top.get_column(label).sum())
        precision = pos / top.height
        row: dict[str, Any] = {
            "fraction": f,
            "leads_worked": top.height,
            "conversions": int(pos),
            "precision": precision,
            "lift": precision / base if base > 0 else math.nan,
            "gains": pos / total_pos if total_pos > 0 else math.nan,
        }
        if oracle is not None and truth is not None:
            exp_model = float(top.get_column(truth).sum())
            exp_oracle = float(oracle.filter(pl.col("_rank") <= k).get_column(truth).sum())
            row |= {
                "expected_conversions": exp_model,
                "oracle_expected_conversions": exp_oracle,
                "capture_vs_oracle": exp_model / exp_oracle if exp_oracle > 0 else math.nan,
            }
        out.append(row)
    return out


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
