"""Blocks of whole entities of one shard, for building its per-entity tables a block at a time.

A query whose every output row reads only its own entity's rows (the clinical features, labels and unit
audit) gives the same table built over the whole shard or block by block, concatenated in entity order;
its intermediates then scale with a block instead of the shard. A block is ``[start, next start)`` of the
entity id, the starts chosen so that the blocks hold about equal numbers of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import polars as pl


def block_starts(
    tables: Mapping[str, pl.LazyFrame], entity_column: Callable[[str], str], block_rows: int
) -> list[int]:
    """The first entity id of each block of at most about ``block_rows`` rows over all ``tables``
    (``ceil(rows / block_rows)`` blocks of about equal rows, whole entities); ``[]`` when ``block_rows`` is 0,
    there are no rows, or an entity id is null (a null id fits no block: build whole)."""
    if block_rows <= 0 or not tables:
        return []
    ids = pl.concat(
        [t.select(pl.col(entity_column(name)).cast(pl.Int64).alias("_e")) for name, t in tables.items()]
    )
    counts = ids.group_by("_e").agg(pl.len().alias("_n")).sort("_e").collect()
    total = int(counts["_n"].sum()) if counts.height else 0
    if total == 0 or counts["_e"].null_count() > 0:
        return []
    k = -(-total // block_rows)
    # Block j takes the entities whose preceding rows are in [j·total/k, (j+1)·total/k).
    block = (counts["_n"].cum_sum() - counts["_n"]) * k // total
    return [int(e) for e in counts.filter(block != block.shift(1).fill_null(-1))["_e"]]


def block_bounds(starts: list[int]) -> list[tuple[int, int | None]]:
    """``[(start, next start), ...]``, the last one open-ended."""
    return list(zip(starts, [*starts[1:], None], strict=True))


def within(column: str, lo: int, hi: int | None) -> pl.Expr:
    """Rows of the block ``[lo, hi)`` of entity ``column``."""
    return (pl.col(column) >= lo) & (pl.col(column) < hi) if hi is not None else pl.col(column) >= lo
