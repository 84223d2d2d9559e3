"""Metrics: small objects called with one `EvalContext` (see base.py)."""
