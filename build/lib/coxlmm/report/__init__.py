"""Reporting: figures (PNG), loggers (W&B, CSV), tables of sweeps."""
