"""Metrics and (later) traces: what the services report about their work."""
