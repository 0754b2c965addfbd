"""Synthetic patient-year generator (docs/science.md §1); the public API is re-exported by ``clinrisk.generate``."""
