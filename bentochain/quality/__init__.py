"""Quality against a baseline: replaying recorded requests on a candidate, and its gate."""
