"""Kubeflow pipeline definitions for clinrisk (wiring only; the logic lives in ``clinrisk``)."""
