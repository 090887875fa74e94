"""One profile as Kubernetes objects: a Deployment per service, as the split topology runs it.

Every pod runs the command ``serve-split`` runs locally (``server_command``) against the Bento in
the image. Callers find their dependencies' pods through a headless Service each, re-resolved by
the upstream layer, which balances per request (a ClusterIP Service would balance per
connection, and a caller keeps its connections). The objects are plain dicts, so a test reads
exactly what ``kubectl apply`` would get.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bentochain.config.loader import INTERNAL_TOKEN_ENV, PROJECT_ROOT
from bentochain.config.schema import (
    SERVICE_KEYS,
    LLMSettings,
    ScalingMetric,
    ServiceSettings,
    Settings,
    env_key,
)
from bentochain.deploy.placement import (
    GPU_LABEL,
    PlacementError,
    SpotPool,
    off_spot,
    on_spot,
    spot_pool,
)
from bentochain.serving import probes
from bentochain.serving.topology import (
    CANARY_CAPABLE,
    CHAIN_SERVICES,
    SERVICES,
    callees_of,
    callers_of,
    discovery_env,
    server_command,
)

Object = dict[str, Any]

PORT = 3000
IMAGE = "bentochain"  # the name overlays point at the real image (kustomize `images`)
BENTO_PATH = "/home/bentoml/bento"  # where `bentoml containerize` puts the Bento
SOURCE = f"{BENTO_PATH}/src"
BENTO_UID = 1034  # the image's `bentoml` user
STATE_DIR = "/var/lib/bentochain"
EXIT_MARGIN = 5  # seconds after the drain for the server to exit
STARTUP_SECONDS = 600  # model loading: how long a pod may take to come up
PART_OF = "bentochain"
NAME_LABEL = "app.kubernetes.io/name"
TRACK_LABEL = "bentochain.dev/track"
NEXT_TRACK = "next"  # a release's canary pods (overlays/canary), beside the stable ones
CAPACITY_LABEL = "bentochain.dev/capacity"
QUEUE_METRIC = "bentochain_llm_queue"
IN_FLIGHT_METRIC = "bentochain_in_flight_requests"

NAMES = {
    "Gateway": "gateway",
    "LLM": "llm",
    "Embedder": "embedder",
    "TranslatorFR": "translator-fr",
    "TranslatorES": "translator-es",
    "SQLChain": "sql-chain",
    "RAGChain": "rag-chain",
}
"""Each BentoML service's name on the cluster (Deployment, Service and DNS name)."""


class RenderError(ValueError):
    """The profile cannot be deployed as it is; the message names the key to change."""


def component(service: str) -> str:
    if service == "Gateway":
        return "gateway"
    return "chain" if service in CHAIN_SERVICES else "model"


def labels(service: str, **more: str) -> dict[str, str]:
    return {
        NAME_LABEL: NAMES[service],
        "app.kubernetes.io/component": component(service),
        "app.kubernetes.io/part-of": PART_OF,
        **more,
    }


def config_path(profile: Path) -> str:
    """The profile's path inside the image: only what the Bento carries can be used."""
    configs = PROJECT_ROOT / "configs"
    resolved = profile.resolve()
    if resolved.parent != configs:
        raise RenderError(
            f"{profile}: the Bento carries only configs/*.yaml; copy the profile into "
            f"{configs} and build the image with it"
        )
    return f"{SOURCE}/configs/{resolved.name}"


@dataclass(frozen=True)
class Plan:
    """What one service needs on the cluster, worked out once from the profile."""

    service: str
    entry: ServiceSettings
    grace: float
    prestop: int
    spot: SpotPool | None

    @property
    def termination_grace(self) -> int:
        """Long enough for the preStop pause, the whole drain and the exit."""
        return math.ceil(self.prestop + self.grace + EXIT_MARGIN)

    @property
    def autoscaled(self) -> bool:
        scaling = self.entry.scaling
        return scaling.max_replicas > scaling.min_replicas

    def metric(self) -> ScalingMetric:
        chosen = self.entry.scaling.metric
        if chosen is None:
            return "queue" if isinstance(self.entry, LLMSettings) else "in_flight"
        if chosen == "queue" and not isinstance(self.entry, LLMSettings):
            raise RenderError(
                f"{key(self.service)}.scaling.metric 'queue' is the LLM's own: use in_flight or cpu"
            )
        return chosen


def key(service: str) -> str:
    return SERVICE_KEYS[service]


def plan(settings: Settings, service: str) -> Plan:
    entry = settings.entry(service)
    grace = settings.fixed_grace_seconds(service)
    # Callers re-resolve a Service's DNS name every refresh_seconds: the pause before the drain
    # lets them drop this pod first, so fewer of their requests meet a 503 `draining`.
    refresh = 5.0 if service == "Gateway" else settings.upstream(service).refresh_seconds
    prestop = math.ceil(refresh)
    pool = None
    if entry.scaling.spot is not None:
        pool = spot_pool(settings.deploy.kubernetes.cloud, key(service))
    found = Plan(service, entry, grace, prestop, pool)
    if pool is not None and found.termination_grace > pool.notice_seconds:
        room = pool.notice_seconds - prestop - EXIT_MARGIN
        raise RenderError(
            f"{key(service)} runs on spot, but its shutdown ({prestop}s preStop + {grace:g}s "
            f"drain + {EXIT_MARGIN}s exit) does not fit the {pool.notice_seconds:g}s notice of "
            f"{settings.deploy.kubernetes.cloud}: set {key(service)}.shutdown.grace_seconds to "
            f"{room:g} or less"
        )
    return found


def caller_env(settings: Settings, service: str) -> list[dict[str, str]]:
    """How ``service`` finds each service it calls: that Service's DNS name, per request."""
    env: list[dict[str, str]] = []
    for callee in callees_of(service):
        found = discovery_env(callee, "dns", NAMES[callee])
        found[env_key(callee, "upstream", "port")] = str(PORT)
        env += [{"name": name, "value": value} for name, value in found.items()]
        if callee in CANARY_CAPABLE and settings.canary(callee) is not None:
            canary = f"{NAMES[callee]}-canary"
            env += [
                {"name": env_key(callee, "canary", "dns"), "value": canary},
                {"name": env_key(callee, "canary", "port"), "value": str(PORT)},
            ]
    return env


def container(settings: Settings, config: str, p: Plan, track: str) -> Object:
    service = p.service
    depends = {callee: f"http://{NAMES[callee]}:{PORT}" for callee in callees_of(service)}
    command = server_command(
        service, "0.0.0.0", PORT, depends, target=BENTO_PATH, working_dir=None, python="python"
    )
    env: list[Object] = [
        {"name": "BENTOCHAIN_CONFIG", "value": config},
        # The drain the pod's terminationGracePeriodSeconds is made for, whatever the profile
        # in the image says (its 'auto' would outgrow the period and be killed mid-drain).
        {
            "name": env_key(service, "shutdown", "grace_seconds"),
            "value": f"{settings.fixed_grace_seconds(service):g}",
        },
        # Required: a pod without the token would make its own, and the calls between services
        # would fail. Missing from the Secret, the pod does not start, and says why.
        {
            "name": INTERNAL_TOKEN_ENV,
            "valueFrom": {
                "secretKeyRef": {
                    "name": settings.deploy.kubernetes.secret,
                    "key": INTERNAL_TOKEN_ENV,
                }
            },
        },
    ]
    if service in CHAIN_SERVICES:
        env.append({"name": "BENTOCHAIN_CHAINS__STATE_DIR", "value": STATE_DIR})
    env += caller_env(settings, service)
    canary = settings.canary(service)
    if track == "canary" and canary is not None:
        env.append({"name": env_key(service, "model"), "value": str(canary.model)})
    liveness = settings.entry(service).liveness
    probe = {"httpGet": {"path": probes.LIVEZ, "port": "http"}, "timeoutSeconds": 5}
    spec: Object = {
        "name": "server",
        "image": IMAGE,
        "workingDir": SOURCE,  # so `python -m bentochain...` imports the Bento's own code
        "args": command,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
        + (
            [{"name": "metrics", "containerPort": metrics, "protocol": "TCP"}]
            if (metrics := metrics_port(settings, service)) != PORT
            else []
        ),
        "env": env,
        "envFrom": [{"secretRef": {"name": settings.deploy.kubernetes.secret}}],
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": STARTUP_SECONDS // 5},
        "livenessProbe": {
            **probe,
            "periodSeconds": liveness.period_seconds,
            "timeoutSeconds": liveness.timeout_seconds,
            "failureThreshold": liveness.failure_threshold,
        },
        "readinessProbe": {
            "httpGet": {"path": probes.READYZ, "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": p.prestop}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    resources = resources_of(p.entry)
    if resources:
        spec["resources"] = resources
    if service in CHAIN_SERVICES:
        spec["volumeMounts"] = [{"name": "state", "mountPath": STATE_DIR}]
    return spec


def resources_of(entry: ServiceSettings) -> Object:
    wanted = entry.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if wanted.cpu:
        requests["cpu"] = wanted.cpu
    if wanted.memory:
        requests["memory"] = limits["memory"] = wanted.memory  # a model that outgrows it is OOM
    if wanted.gpu:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(wanted.gpu)
    found: Object = {}
    if requests:
        found["requests"] = requests
    if limits:
        found["limits"] = limits
    return found


def pod_spec(settings: Settings, config: str, p: Plan, track: str, capacity: str) -> Object:
    spec: Object = {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": p.termination_grace,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": BENTO_UID,
            "runAsGroup": BENTO_UID,
            "fsGroup": BENTO_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container(settings, config, p, track)],
    }
    tolerations: list[Object] = []
    wanted = p.entry.resources
    if wanted.gpu:
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
        if wanted.gpu_type:
            k8s = settings.deploy.kubernetes
            label = k8s.gpu_node_label or GPU_LABEL[k8s.cloud]
            spec["nodeSelector"] = {label: wanted.gpu_type}
    if p.spot is not None:
        placed = on_spot(p.spot) if capacity == "spot" else off_spot(p.spot)
        spec["affinity"] = placed["affinity"]
        tolerations += placed.get("tolerations", [])
    if tolerations:
        spec["tolerations"] = tolerations
    if p.service in CHAIN_SERVICES:
        spec["volumes"] = [{"name": "state", "emptyDir": {}}]
    return spec


def deployment(
    settings: Settings,
    config: str,
    p: Plan,
    *,
    name: str,
    track: str = "stable",
    capacity: str = "any",
    replicas: int | None,
) -> Object:
    selector = {NAME_LABEL: NAMES[p.service], TRACK_LABEL: track, CAPACITY_LABEL: capacity}
    spec: Object = {
        "selector": {"matchLabels": selector},
        # As `bentochain rollout`: the new pod is ready before an old one drains.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "progressDeadlineSeconds": STARTUP_SECONDS + 300,
        "revisionHistoryLimit": 5,
        "template": {
            "metadata": {
                "labels": labels(p.service, **{TRACK_LABEL: track, CAPACITY_LABEL: capacity}),
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(metrics_port(settings, p.service)),
                    "prometheus.io/path": probes.METRICS,
                },
            },
            "spec": pod_spec(settings, config, p, track, capacity),
        },
    }
    if replicas is not None:  # left out when an autoscaler owns the count
        spec = {"replicas": replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        # The track on the Deployment too: the release pipeline waits on its canaries by it.
        "metadata": {"name": name, "labels": labels(p.service, **{TRACK_LABEL: track})},
        "spec": spec,
    }


def autoscaler(p: Plan, target: str, low: int, high: int) -> Object:
    scaling = p.entry.scaling
    metric = p.metric()
    if metric == "cpu":
        wanted: Object = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_percent},
            },
        }
    else:
        wanted = {
            "type": "Pods",
            "pods": {
                "metric": {"name": QUEUE_METRIC if metric == "queue" else IN_FLIGHT_METRIC},
                "target": {
                    "type": "AverageValue",
                    "averageValue": str(scaling.target_concurrency),
                },
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": target, "labels": labels(p.service)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [wanted],
            # Replicas hold models: scale down slowly, so a short lull does not unload one.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def workloads(settings: Settings, config: str, p: Plan) -> list[Object]:
    """The Deployments of one service (an on-demand and a spot one when it uses spot), the
    autoscaler of the one that scales, and its canary's Deployment."""
    scaling = p.entry.scaling
    name = NAMES[p.service]
    found: list[Object] = []
    if p.spot is None:
        replicas = None if p.autoscaled else scaling.min_replicas
        found.append(deployment(settings, config, p, name=name, replicas=replicas))
        if p.autoscaled:
            found.append(autoscaler(p, name, scaling.min_replicas, scaling.max_replicas))
    else:
        fixed = scaling.spot.min_on_demand if scaling.spot is not None else 0
        found.append(
            deployment(settings, config, p, name=name, capacity="on-demand", replicas=fixed)
        )
        spot_name = f"{name}-spot"
        low = max(1, scaling.min_replicas - fixed)  # an autoscaler keeps at least one
        high = max(low, scaling.max_replicas - fixed)
        found.append(
            deployment(settings, config, p, name=spot_name, capacity="spot", replicas=None)
        )
        found.append(autoscaler(p, spot_name, low, high))
    if p.service in CANARY_CAPABLE and settings.canary(p.service) is not None:
        found.append(
            deployment(settings, config, p, name=f"{name}-canary", track="canary", replicas=1)
        )
    return found


def service_object(service: str, name: str, selector: dict[str, str]) -> Object:
    spec: Object = {
        "selector": selector,
        "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
    }
    if service != "Gateway":
        # Headless: the name resolves to every ready pod, and callers balance per request.
        spec = {"clusterIP": "None", **spec}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels(service)},
        "spec": spec,
    }


def services(settings: Settings, service: str) -> list[Object]:
    name = NAMES[service]
    if service in CANARY_CAPABLE and settings.canary(service) is not None:
        # The main name is the stable version only: callers weigh the two tracks themselves.
        found = [service_object(service, name, {NAME_LABEL: name, TRACK_LABEL: "stable"})]
        canary = {NAME_LABEL: name, TRACK_LABEL: "canary"}
        return [*found, service_object(service, f"{name}-canary", canary)]
    return [service_object(service, name, {NAME_LABEL: name})]


def disruption_budget(service: str) -> Object:
    name = NAMES[service]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": labels(service)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {NAME_LABEL: name}}},
    }


def metrics_port(settings: Settings, service: str) -> int:
    """Where Prometheus scrapes ``service``: the Gateway's own metrics port when it has one."""
    moved = settings.gateway.metrics_port if service == "Gateway" else None
    return PORT if moved is None else moved


def network_policy(settings: Settings, service: str) -> Object:
    """Who may open a connection to ``service``'s pods.

    The Gateway: anyone. Any other service: the services that call it, and the Prometheus that
    scrapes it; BentoML's internal services accept pickled bodies, so nothing else may reach
    them.
    """
    name = NAMES[service]
    port = [{"port": PORT, "protocol": "TCP"}]
    scraper = settings.deploy.kubernetes.prometheus
    prometheus: Object = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": scraper.namespace}},
        "podSelector": {"matchLabels": dict(scraper.pod_labels)},
    }
    if service == "Gateway":
        ingress: list[Object] = [{"ports": port}]
        metrics = settings.gateway.metrics_port
        if metrics is not None:  # its own port: the scraper's only
            ingress.append({"from": [prometheus], "ports": [{"port": metrics, "protocol": "TCP"}]})
    else:
        peers: list[Object] = [
            {"podSelector": {"matchLabels": {NAME_LABEL: NAMES[caller]}}}
            for caller in callers_of(service)
        ]
        ingress = [{"from": [*peers, prometheus], "ports": port}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{name}-ingress", "labels": labels(service)},
        "spec": {
            "podSelector": {"matchLabels": {NAME_LABEL: name}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def default_deny() -> Object:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "default-deny-ingress",
            "labels": {"app.kubernetes.io/part-of": PART_OF},
        },
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def plans(settings: Settings) -> list[Plan]:
    try:
        return [plan(settings, service) for service in SERVICES]
    except PlacementError as exc:
        raise RenderError(str(exc)) from None


def render(settings: Settings, profile: Path) -> dict[str, list[Object]]:
    """Every object for ``settings``, grouped by the file it goes in (one per service)."""
    config = config_path(profile)
    files: dict[str, list[Object]] = {"network.yaml": [default_deny()]}
    for p in plans(settings):
        files[f"{NAMES[p.service]}.yaml"] = [
            *workloads(settings, config, p),
            *services(settings, p.service),
            disruption_budget(p.service),
            network_policy(settings, p.service),
        ]
    return files


def release_canaries(settings: Settings, profile: Path) -> list[Object]:
    """One pod of the next release per service, beside the running ones: a canary.

    Each is a Deployment of its own (``<name>-next``, track ``next``) whose pods carry the
    service's name label, so the service's headless Service and NetworkPolicy take them in, and
    callers, balancing per request, send them one request in (replicas + 1). The track keeps its
    selector apart from the stable Deployments'. A service with a model canary is left out: its
    Service selects the stable track only, and one experiment at a time is enough. On-demand
    nodes only: a spot notice must not end the canary.
    """
    config = config_path(profile)
    found: list[Object] = []
    for p in plans(settings):
        if p.service in CANARY_CAPABLE and settings.canary(p.service) is not None:
            continue
        capacity = "any" if p.spot is None else "on-demand"
        name = f"{NAMES[p.service]}-{NEXT_TRACK}"
        found.append(
            deployment(
                settings, config, p, name=name, track=NEXT_TRACK, capacity=capacity, replicas=1
            )
        )
    return found


def adapter_rules() -> Object:
    """prometheus-adapter rules serving the autoscalers' Pods metrics (its Helm values)."""

    def rule(series: str, name: str, query: str) -> Object:
        return {
            "seriesQuery": f'{series}{{namespace!="",pod!=""}}',
            "resources": {
                "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
            },
            "name": {"matches": f"^{series}$", "as": name},
            "metricsQuery": query,
        }

    matched = "{<<.LabelMatchers>>}"
    queue = (
        f"sum by (<<.GroupBy>>) (bentochain_llm_running_requests{matched}) + "
        f"sum by (<<.GroupBy>>) (bentochain_llm_waiting_requests{matched})"
    )
    in_flight = f"sum by (<<.GroupBy>>) (bentoml_service_request_in_progress{matched})"
    return {
        "rules": {
            "default": False,
            "custom": [
                rule("bentochain_llm_running_requests", QUEUE_METRIC, queue),
                rule("bentoml_service_request_in_progress", IN_FLIGHT_METRIC, in_flight),
            ],
        }
    }


ADAPTER_SERIES = (
    "bentochain_llm_running_requests",
    "bentochain_llm_waiting_requests",
    "bentoml_service_request_in_progress",
)
"""The series the adapter's rules read: each service's /metrics must expose them."""
