"""Raw contracts of the three export files as pandera schemas (polars backend), built from row rules.

As in :mod:`clinrisk.schemas`, each row check is a :class:`clinrisk.schemas.Rule` (a null-safe polars
boolean expression plus a human reason); the pandera schema wraps exactly those expressions, so the
quarantine reasons and the pandera failure cases cannot disagree. Rules that need another file (an ID in both
customers and noncustomers, usage for an unknown company) take that file's IDs as an argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandera.polars as pa
import polars as pl

from clinrisk.schemas import Rule, rule_mask
from clinrisk.usecases.leads.tables import (
    CONTRACTS,
    CUSTOMERS_FILE,
    NONCUSTOMERS_FILE,
    USAGE_COLUMNS,
    USAGE_FILE,
)

__all__ = ["NON_NULLABLE", "company_rules", "file_schema", "usage_rules"]

NON_NULLABLE: dict[str, frozenset[str]] = {
    CUSTOMERS_FILE: frozenset({"ID", "CLOSEDATE"}),
    NONCUSTOMERS_FILE: frozenset({"ID"}),
    USAGE_FILE: frozenset({"ID", "WHEN_TIMESTAMP", *USAGE_COLUMNS}),
}


def _ge(column: str, lo: float) -> Rule:
    return Rule(f"ge_{lo:g}", column, (pl.col(column) >= lo).fill_null(True), f"{column} must be >= {lo:g}")


def _duplicate_rules(key: Sequence[str]) -> list[Rule]:
    """Identical copies keep the first occurrence; rows that share the key but disagree are all quarantined."""
    k = list(key)
    dup = pl.struct(k).is_duplicated()
    versions = pl.struct(pl.all()).hash().n_unique().over(k)
    first = pl.struct(k).is_first_distinct()
    label = ",".join(k)
    return [
        Rule(
            "duplicate_copy",
            k[0],
            ~(dup & (versions == 1) & ~first).fill_null(False),
            f"identical copy of an earlier row for the same {label}; the first copy is kept",
            report_column=label,
            guard=dup,
        ),
        Rule(
            "duplicate_conflict",
            k[0],
            ~(dup & (versions > 1)).fill_null(False),
            f"several different rows for the same {label}; all are quarantined",
            report_column=label,
            guard=dup,
        ),
    ]


def company_rules(file: str, other_file_ids: pl.Series) -> list[Rule]:
    """Rules of ``customers.csv`` or ``noncustomers.csv``; ``other_file_ids`` are the other file's IDs."""
    other = CUSTOMERS_FILE if file == NONCUSTOMERS_FILE else NONCUSTOMERS_FILE
    rules = [
        _ge("ID", 0),
        _ge("ALEXA_RANK", 1),
        Rule(
            "not_in_both",
            "ID",
            ~pl.col("ID").is_in(other_file_ids.cast(pl.Int64).implode()).fill_null(False),
            f"ID also appears in {other}: a company is either a customer or not; both rows are quarantined",
        ),
    ]
    if file == CUSTOMERS_FILE:
        rules.append(_ge("MRR", 0))
    return rules + _duplicate_rules(["ID"])


def usage_rules(known_ids: pl.Series) -> list[Rule]:
    """Rules of ``usage_actions.csv``; ``known_ids`` are the companies that passed their own file."""
    rules = [_ge("ID", 0), *(_ge(c, 0) for c in USAGE_COLUMNS)]
    rules.append(
        Rule(
            "known_company",
            "ID",
            pl.col("ID").is_in(known_ids.cast(pl.Int64).implode()).fill_null(True),
            f"ID is in neither {CUSTOMERS_FILE} nor {NONCUSTOMERS_FILE} (or its company row was quarantined)",
        )
    )
    return rules + _duplicate_rules(["ID", "WHEN_TIMESTAMP"])


def _as_check(rule: Rule) -> pa.Check:
    return pa.Check(lambda data: rule_mask(rule, data.lazyframe), name=rule.name)


def file_schema(file: str, rules: Sequence[Rule]) -> pa.DataFrameSchema:
    """The pandera schema of one file: exact dtypes, nullability and every rule in ``rules``."""
    contract = CONTRACTS[file]
    by_col: dict[str, list[pa.Check]] = {c: [] for c in contract}
    for rule in rules:
        by_col[rule.column].append(_as_check(rule))
    columns = {
        c: pa.Column(dtype, checks=by_col[c], nullable=c not in NON_NULLABLE[file])
        for c, dtype in contract.items()
    }
    return pa.DataFrameSchema(columns, name=file, strict=False, ordered=False)
