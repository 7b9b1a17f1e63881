"""Metering layer: Prometheus metrics, jupyter_events events, and (later) ledger and budgets."""
