"""The data dictionary of a lead-conversion export: three CSV files, their columns and contract dtypes."""

from __future__ import annotations

import polars as pl

__all__ = [
    "CONTRACTS",
    "CUSTOMERS_FILE",
    "EMPLOYEE_RANGES",
    "HAZARD_FILE",
    "NONCUSTOMERS_FILE",
    "USAGE_COLUMNS",
    "USAGE_FILE",
]

CUSTOMERS_FILE, NONCUSTOMERS_FILE, USAGE_FILE = "customers.csv", "noncustomers.csv", "usage_actions.csv"
HAZARD_FILE = "truth/weekly_hazard.parquet"

# The export's employee buckets, smallest first (the order is the ordinal feature).
EMPLOYEE_RANGES: tuple[str, ...] = (
    "1",
    "2 to 5",
    "6 to 10",
    "11 to 25",
    "26 to 50",
    "51 to 200",
    "201 to 1000",
    "1001 to 10000",
    "10001 or more",
)
USAGE_COLUMNS: tuple[str, ...] = tuple(
    f"{kind}_{product}"
    for kind in ("ACTIONS", "USERS")
    for product in ("CRM_CONTACTS", "CRM_COMPANIES", "CRM_DEALS", "EMAIL")
)
_TS = pl.Datetime("us")
_FIRMOGRAPHICS: dict[str, pl.DataType] = {
    "ALEXA_RANK": pl.Int64(),
    "EMPLOYEE_RANGE": pl.Enum(list(EMPLOYEE_RANGES)),
    "INDUSTRY": pl.String(),
}
# file -> column -> contract dtype, in the export's column order
CONTRACTS: dict[str, dict[str, pl.DataType]] = {
    CUSTOMERS_FILE: {"ID": pl.Int64(), "CLOSEDATE": _TS, "MRR": pl.Float64(), **_FIRMOGRAPHICS},
    NONCUSTOMERS_FILE: {"ID": pl.Int64(), **_FIRMOGRAPHICS},
    USAGE_FILE: {"ID": pl.Int64(), "WHEN_TIMESTAMP": _TS, **dict.fromkeys(USAGE_COLUMNS, pl.Int64())},
}
