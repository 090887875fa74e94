"""API keys and per-key limits: who may use the gateway, and how much."""
