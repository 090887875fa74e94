"""Where a pod may run on each cloud: GPU node labels, spot pools and their notice.

Each managed Kubernetes labels (and sometimes taints) its spot nodes its own way; a pod that must
stay off them needs the opposite affinity, since nothing stops the scheduler from putting an
on-demand replica on a spot node otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bentochain.config.schema import Cloud


@dataclass(frozen=True)
class SpotPool:
    label: str
    value: str
    notice_seconds: float
    """Time between the preemption notice and the node going away."""
    on_demand: dict[str, Any]
    """A node selector term that only on-demand nodes match."""
    taint: dict[str, str] | None = None
    """The taint the cloud puts on spot nodes (or that its docs tell users to put)."""


SPOT: dict[str, SpotPool] = {
    # GKE spot VMs: 30 s notice; `cloud.google.com/gke-spot=true`, tainted when the pool says so.
    "gke": SpotPool(
        label="cloud.google.com/gke-spot",
        value="true",
        notice_seconds=30.0,
        on_demand={"key": "cloud.google.com/gke-spot", "operator": "DoesNotExist"},
        taint={"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NoSchedule"},
    ),
    # EKS managed node groups label capacity; a spot interruption notice comes 2 min ahead.
    "eks": SpotPool(
        label="eks.amazonaws.com/capacityType",
        value="SPOT",
        notice_seconds=120.0,
        on_demand={
            "key": "eks.amazonaws.com/capacityType",
            "operator": "In",
            "values": ["ON_DEMAND"],
        },
    ),
    # AKS spot node pools are labelled and tainted by AKS itself; eviction notice is 30 s.
    "aks": SpotPool(
        label="kubernetes.azure.com/scalesetpriority",
        value="spot",
        notice_seconds=30.0,
        on_demand={"key": "kubernetes.azure.com/scalesetpriority", "operator": "DoesNotExist"},
        taint={
            "key": "kubernetes.azure.com/scalesetpriority",
            "value": "spot",
            "effect": "NoSchedule",
        },
    ),
}

GPU_LABEL: dict[str, str] = {
    "gke": "cloud.google.com/gke-accelerator",
    "eks": "k8s.amazonaws.com/accelerator",
    "aks": "accelerator",
    "generic": "nvidia.com/gpu.product",  # NVIDIA GPU feature discovery
}


class PlacementError(ValueError):
    """A profile asks for a placement the chosen cloud cannot give."""


def spot_pool(cloud: Cloud, service_key: str) -> SpotPool:
    pool = SPOT.get(cloud)
    if pool is None:
        raise PlacementError(
            f"{service_key}.scaling.spot needs deploy.kubernetes.cloud set to one of "
            f"{', '.join(sorted(SPOT))} (whose spot node labels to use), not {cloud!r}"
        )
    return pool


def on_spot(pool: SpotPool) -> dict[str, Any]:
    """Pod spec fields that put a pod on the spot pool, and only there."""
    term = {"key": pool.label, "operator": "In", "values": [pool.value]}
    placed: dict[str, Any] = {"affinity": _required(term)}
    if pool.taint is not None:
        placed["tolerations"] = [{**pool.taint, "operator": "Equal"}]
    return placed


def off_spot(pool: SpotPool) -> dict[str, Any]:
    """Pod spec fields that keep a pod on on-demand nodes."""
    return {"affinity": _required(pool.on_demand)}


def _required(term: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [term]}]
            }
        }
    }
