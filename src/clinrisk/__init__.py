"""clinrisk: synthetic patient-year data to a served, monitored type 2 diabetes risk model."""

__version__ = "0.1.0"
