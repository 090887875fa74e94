"""The ``bentoml deploy -f`` file for BentoCloud, from a profile.

BentoCloud runs each service of the Bento as its own deployment and wires their dependencies
itself, so the file carries only what the profile decides per service: its replica range, its
instance type (chosen by BentoCloud from the service's resources when the profile names none)
and its environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bentochain.config.schema import Settings
from bentochain.deploy.kubernetes import config_path
from bentochain.serving.topology import SERVICES

HEADER = "# Rendered by `bentochain deploy bentocloud` from the profile; do not edit by hand.\n"


def config(settings: Settings, profile: Path, bento: str) -> dict[str, Any]:
    cloud = settings.deploy.bentocloud
    services: dict[str, Any] = {}
    for service in SERVICES:
        entry = settings.entry(service)
        scaling = entry.scaling
        one: dict[str, Any] = {
            "scaling": {"min_replicas": scaling.min_replicas, "max_replicas": scaling.max_replicas}
        }
        if entry.instance_type:
            one["instance_type"] = entry.instance_type
        if entry.env:
            one["envs"] = [{"name": k, "value": v} for k, v in sorted(entry.env.items())]
        services[service] = one
    body: dict[str, Any] = {"name": cloud.name, "bento": bento}
    if cloud.cluster:
        body["cluster"] = cloud.cluster
    body["access_authorization"] = cloud.access_authorization
    body["envs"] = [{"name": "BENTOCHAIN_CONFIG", "value": config_path(profile)}]
    if cloud.secrets:
        body["secrets"] = list(cloud.secrets)
    body["services"] = services
    return body


def dump(body: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(body, sort_keys=False)
