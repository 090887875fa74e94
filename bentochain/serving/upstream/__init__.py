"""The upstream layer: how one service calls another (replicas, balancing, health, retries,
draining, canary versions and streams)."""

from bentochain.serving.upstream.client import Upstream, UpstreamError
from bentochain.serving.upstream.discovery import UpstreamConfigError, discovery_for

__all__ = ["Upstream", "UpstreamConfigError", "UpstreamError", "discovery_for"]
