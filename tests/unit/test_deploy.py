"""What `bentochain deploy` renders: built by kustomize, valid for the Kubernetes versions we
support, committed and current, and keeping its promises when read back as objects."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bentochain.cli import DEFAULT_DEV_IMAGE, DEFAULT_IMAGE, PRODUCTION_PROFILE, main
from bentochain.config.loader import DEFAULT_PROFILE, PROJECT_ROOT, load_settings
from bentochain.config.schema import Settings, env_key
from bentochain.deploy.kubernetes import (
    ADAPTER_SERIES,
    IN_FLIGHT_METRIC,
    NAME_LABEL,
    NAMES,
    QUEUE_METRIC,
    TRACK_LABEL,
    RenderError,
    config_path,
    render,
)
from bentochain.deploy.placement import SPOT
from bentochain.serving.topology import SERVICES, callers_of

COMMITTED = PROJECT_ROOT / "deploy" / "k8s"
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
Object = dict[str, Any]

BASE = load_settings(DEFAULT_PROFILE, environ={})
PROD = load_settings(PRODUCTION_PROFILE, environ={})
OVERLAYS = {"dev": BASE, "prod": PROD}
BUILT = {**OVERLAYS, "canary": PROD}  # canary: a release's first pods, beside prod's


def kubectl() -> str:
    found = shutil.which("kubectl")
    assert found, "kubectl (with kustomize built in) is needed to build the overlays"
    return found


def build(folder: Path) -> list[Object]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh render with the default images, as a new user would make it."""
    out = tmp_path_factory.mktemp("k8s")
    assert main(["deploy", "k8s", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def built(rendered: Path) -> dict[str, list[Object]]:
    return {name: build(rendered / "overlays" / name) for name in BUILT}


def by_kind(objects: list[Object], kind: str) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*.yaml")}


def test_the_committed_manifests_are_what_the_profiles_render(rendered: Path) -> None:
    fresh, committed = files(rendered), files(COMMITTED)
    stale = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
    assert not stale, (
        f"deploy/k8s is stale in {stale}: run `bentochain deploy k8s --out deploy/k8s`"
    )


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_each_overlay_is_its_profile_rendered_whole(
    built: dict[str, list[Object]], overlay: str
) -> None:
    """The prod overlay is patches over the base: built, it must be exactly the production
    profile's objects (so a patch can never drift from the profile)."""
    settings = OVERLAYS[overlay]
    profile = DEFAULT_PROFILE if overlay == "dev" else PRODUCTION_PROFILE
    image = DEFAULT_DEV_IMAGE if overlay == "dev" else DEFAULT_IMAGE
    namespace = "bentochain-dev" if overlay == "dev" else "bentochain"
    expected = {}
    for obj in (o for objs in render(settings, profile).values() for o in objs):
        obj = yaml.safe_load(yaml.safe_dump(obj))
        obj["metadata"]["namespace"] = namespace
        for c in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            c["image"] = image
        expected[(obj["kind"], obj["metadata"]["name"])] = obj
    got = {
        (o["kind"], o["metadata"]["name"]): o for o in built[overlay] if o["kind"] != "Namespace"
    }
    assert got.keys() == expected.keys()
    for ident, obj in expected.items():
        assert got[ident] == obj, ident


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", sorted(BUILT))
def test_every_object_is_valid_for_kubernetes(
    built: dict[str, list[Object]], overlay: str, version: str
) -> None:
    import kubernetes_validate

    for obj in built[overlay]:
        kubernetes_validate.validate(obj, version, strict=True)  # raises what is wrong
    # The same check refuses a field Kubernetes does not know (so it really checks).
    (llm, *_) = deployments_of(built[overlay], "LLM")
    broken = yaml.safe_load(yaml.safe_dump(llm))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def deployments_of(objects: list[Object], service: str) -> list[Object]:
    return [
        o
        for o in by_kind(objects, "Deployment").values()
        if o["spec"]["template"]["metadata"]["labels"][NAME_LABEL] == NAMES[service]
    ]


@pytest.mark.parametrize("overlay", sorted(BUILT))
def test_pods_run_the_split_command_with_probes_and_a_drain_that_fits(
    built: dict[str, list[Object]], overlay: str
) -> None:
    settings = BUILT[overlay]
    for service in SERVICES:
        for deployment in deployments_of(built[overlay], service):
            pod = deployment["spec"]["template"]["spec"]
            (server,) = pod["containers"]
            args = server["args"]
            assert args[:4] == ["python", "-m", "bentochain.serving.launch", f"{service}-3000"]
            assert args[4:6] == ["start-http-server", "/home/bentoml/bento"]
            assert args[args.index("--service-name") + 1] == service
            assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert server["livenessProbe"]["httpGet"]["path"] == "/livez"
            assert server["startupProbe"]["httpGet"]["path"] == "/livez"
            prestop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
            grace = settings.fixed_grace_seconds(service)
            assert pod["terminationGracePeriodSeconds"] > prestop + grace
            assert {"secretRef": {"name": settings.deploy.kubernetes.secret}} in server["envFrom"]
            env = {e["name"]: e["value"] for e in server["env"] if "value" in e}
            # The pod drains within its grace period, even where the profile says auto.
            assert float(env[env_key(service, "shutdown", "grace_seconds")]) == grace
            assert not any("KEY" in name and value for name, value in env.items())
            # The internal token comes from the Secret, and a pod without it does not start.
            (token,) = [e for e in server["env"] if e["name"] == "BENTOCHAIN_INTERNAL_TOKEN"]
            assert token == {
                "name": "BENTOCHAIN_INTERNAL_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": settings.deploy.kubernetes.secret,
                        "key": "BENTOCHAIN_INTERNAL_TOKEN",
                    }
                },
            }


def test_callers_reach_each_dependency_through_its_headless_service(
    built: dict[str, list[Object]],
) -> None:
    objects = built["prod"]
    services = by_kind(objects, "Service")
    for service in SERVICES:
        own = services[NAMES[service]]
        headless = own["spec"].get("clusterIP") == "None"
        assert headless == (service != "Gateway"), service
        for caller in callers_of(service):
            (deployment, *_) = deployments_of(objects, caller)
            (server,) = deployment["spec"]["template"]["spec"]["containers"]
            env = {e["name"]: e["value"] for e in server["env"] if "value" in e}
            assert env[env_key(service, "upstream", "dns")] == NAMES[service]
            args = server["args"]
            assert f"{service}=http://{NAMES[service]}:3000" in args


def real_callers(service: str) -> set[str]:
    """Who calls ``service``, read from the service classes' own ``bentoml.depends(...)``
    (parsed, not imported: importing them needs the prepared models)."""
    import ast

    callers = set()
    for path in (PROJECT_ROOT / "services").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for call in ast.walk(node):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "depends"
                    and isinstance(call.args[0], ast.Name)
                    and call.args[0].id == service
                ):
                    callers.add(node.name)
    return callers


def test_network_policies_open_each_service_only_to_its_real_callers(
    built: dict[str, list[Object]],
) -> None:
    objects = built["prod"]
    policies = by_kind(objects, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    names = {v: k for k, v in NAMES.items()}
    for service in SERVICES:
        (rule,) = policies[f"{NAMES[service]}-ingress"]["spec"]["ingress"]
        if service == "Gateway":
            assert "from" not in rule  # the one door from outside the namespace
            continue
        peers = rule["from"]
        inside = {
            names[p["podSelector"]["matchLabels"][NAME_LABEL]]
            for p in peers
            if "namespaceSelector" not in p
        }
        assert inside == real_callers(service), service
        outside = [p for p in peers if "namespaceSelector" in p]
        scraper = PROD.deploy.kubernetes.prometheus
        assert outside == [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": scraper.namespace}
                },
                "podSelector": {"matchLabels": scraper.pod_labels},
            }
        ]


def test_the_llm_scales_on_its_queue_through_the_adapter_rule(
    built: dict[str, list[Object]], rendered: Path
) -> None:
    hpa = by_kind(built["prod"], "HorizontalPodAutoscaler")
    (metric,) = hpa["llm"]["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == QUEUE_METRIC
    assert metric["pods"]["target"]["averageValue"] == str(PROD.llm.scaling.target_concurrency)
    assert hpa["llm"]["spec"]["minReplicas"] == PROD.llm.scaling.min_replicas
    assert hpa["llm"]["spec"]["maxReplicas"] == PROD.llm.scaling.max_replicas
    assert "replicas" not in by_kind(built["prod"], "Deployment")["llm"]["spec"]
    (gateway_metric,) = hpa["gateway"]["spec"]["metrics"]
    assert gateway_metric["pods"]["metric"]["name"] == IN_FLIGHT_METRIC
    rules = yaml.safe_load((rendered / "prometheus-adapter" / "values.yaml").read_text())
    served = {r["name"]["as"]: r for r in rules["rules"]["custom"]}
    assert served.keys() == {QUEUE_METRIC, IN_FLIGHT_METRIC}
    queue = served[QUEUE_METRIC]["metricsQuery"]
    assert "bentochain_llm_running_requests" in queue
    assert "bentochain_llm_waiting_requests" in queue
    for rule in served.values():
        assert any(series in rule["metricsQuery"] for series in ADAPTER_SERIES)


def test_spot_services_keep_their_on_demand_floor(built: dict[str, list[Object]]) -> None:
    objects = built["prod"]
    pool = SPOT[PROD.deploy.kubernetes.cloud]
    spot_services = [s for s in SERVICES if PROD.entry(s).scaling.spot is not None]
    assert spot_services  # the production profile uses spot
    deployments = by_kind(objects, "Deployment")
    hpa = by_kind(objects, "HorizontalPodAutoscaler")
    for service in spot_services:
        scaling = PROD.entry(service).scaling
        assert scaling.spot is not None
        steady, spot = deployments[NAMES[service]], deployments[f"{NAMES[service]}-spot"]
        assert steady["spec"]["replicas"] == scaling.spot.min_on_demand
        terms = lambda d: d["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][  # noqa: E731
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert terms(steady) == [{"matchExpressions": [pool.on_demand]}]
        assert terms(spot) == [
            {"matchExpressions": [{"key": pool.label, "operator": "In", "values": [pool.value]}]}
        ]
        tolerated = spot["spec"]["template"]["spec"]["tolerations"]
        assert pool.taint is None or {**pool.taint, "operator": "Equal"} in tolerated
        assert NAMES[service] not in hpa  # the floor is fixed; only the spot part scales
        scaler = hpa[f"{NAMES[service]}-spot"]["spec"]
        assert scaler["scaleTargetRef"]["name"] == f"{NAMES[service]}-spot"
        assert scaler["maxReplicas"] + scaling.spot.min_on_demand == scaling.max_replicas
        grace = spot["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace <= pool.notice_seconds
        # One budget over both Deployments: the Service's pods, whatever their capacity.
        budget = by_kind(objects, "PodDisruptionBudget")[NAMES[service]]["spec"]
        assert budget["selector"] == {"matchLabels": {NAME_LABEL: NAMES[service]}}


def on_cloud(settings: Settings, cloud: str, embedder_grace: float | None) -> Settings:
    """``settings`` with another cloud and the embedder's own drain (None: the top-level)."""
    from bentochain.config.schema import Shutdown

    shutdown = None if embedder_grace is None else Shutdown(grace_seconds=embedder_grace)
    k8s = settings.deploy.kubernetes.model_copy(update={"cloud": cloud})
    return settings.model_copy(
        update={
            "embedder": settings.embedder.model_copy(update={"shutdown": shutdown}),
            "deploy": settings.deploy.model_copy(update={"kubernetes": k8s}),
        }
    )


def test_a_drain_longer_than_the_spot_notice_is_refused_with_the_key_to_change() -> None:
    # 5 s preStop + 120 s (the top-level drain) + 5 s exit: past GKE's 30 s and EKS's 120 s.
    with pytest.raises(RenderError, match=r"embedder\.shutdown\.grace_seconds to 20 or less"):
        render(on_cloud(PROD, "gke", None), PRODUCTION_PROFILE)
    with pytest.raises(RenderError, match=r"embedder\.shutdown\.grace_seconds to 110 or less"):
        render(on_cloud(PROD, "eks", None), PRODUCTION_PROFILE)
    assert render(on_cloud(PROD, "eks", 110), PRODUCTION_PROFILE)
    with pytest.raises(RenderError, match=r"deploy\.kubernetes\.cloud"):
        render(on_cloud(PROD, "generic", 20), PRODUCTION_PROFILE)


def test_a_profile_outside_configs_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "mine.yaml"
    outside.write_text(PRODUCTION_PROFILE.read_text())
    assert main(["deploy", "k8s", "--out", str(tmp_path / "k"), "--profile", str(outside)]) == 2


def kept(written: Any, read: Any) -> bool:
    """Whether everything ``written`` is in ``read`` (which adds the schema's defaults)."""
    if isinstance(written, dict):
        return isinstance(read, dict) and all(
            k in read and kept(v, read[k]) for k, v in written.items()
        )
    if isinstance(written, list):
        return (
            isinstance(read, list)
            and len(read) == len(written)
            and all(kept(w, r) for w, r in zip(written, read, strict=True))
        )
    return bool(written == read)


def test_the_bentocloud_file_is_what_bentoml_reads(tmp_path: Path) -> None:
    from bentoml._internal.cloud.schemas.schemasv2 import CreateDeploymentSchema
    from bentoml._internal.cloud.schemas.utils import cloud_converter

    out = tmp_path / "bentocloud.yaml"
    assert main(["deploy", "bentocloud", "--out", str(out)]) == 0
    body = yaml.safe_load(out.read_text())
    parsed = cloud_converter.structure(body, CreateDeploymentSchema)
    # BentoML ignores keys it does not know: every key we wrote must survive the round trip.
    assert kept(body, cloud_converter.unstructure(parsed))
    assert set(parsed.services) == set(SERVICES)
    for service in SERVICES:
        entry = PROD.entry(service)
        scaling = parsed.services[service].scaling
        assert scaling is not None
        assert (scaling.min_replicas, scaling.max_replicas) == (
            entry.scaling.min_replicas,
            entry.scaling.max_replicas,
        )
        assert parsed.services[service].instance_type == entry.instance_type
    assert parsed.services["LLM"].instance_type == "gpu.l4.1"
    assert parsed.services["Embedder"].envs is None  # production gives it no env of its own
    assert {"name": "BENTOCHAIN_CONFIG", "value": config_path(PRODUCTION_PROFILE)} in (body["envs"])
    committed = PROJECT_ROOT / "deploy" / "bentocloud.yaml"
    assert committed.read_text() == out.read_text(), (
        "deploy/bentocloud.yaml is stale: run `bentochain deploy bentocloud --out "
        "deploy/bentocloud.yaml`"
    )


def test_replica_counts_come_from_the_profile_in_both_overlays(
    built: dict[str, list[Object]],
) -> None:
    for overlay, settings in OVERLAYS.items():
        budgets = by_kind(built[overlay], "PodDisruptionBudget")
        scalers = by_kind(built[overlay], "HorizontalPodAutoscaler")
        for service in SERVICES:
            assert budgets[NAMES[service]]["spec"]["maxUnavailable"] == 1
            low = high = 0
            for deployment in deployments_of(built[overlay], service):
                name = deployment["metadata"]["name"]
                if name.endswith("-canary"):
                    continue
                scaler = scalers.get(name)
                if scaler is None:
                    low += deployment["spec"]["replicas"]
                    high += deployment["spec"]["replicas"]
                else:
                    assert "replicas" not in deployment["spec"]  # the autoscaler owns it
                    low += scaler["spec"]["minReplicas"]
                    high += scaler["spec"]["maxReplicas"]
            scaling = settings.entry(service).scaling
            assert (low, high) == (scaling.min_replicas, scaling.max_replicas), (overlay, service)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_a_release_canary_is_one_pod_per_service_beside_the_stable_ones(
    built: dict[str, list[Object]],
) -> None:
    """`kubectl apply -k overlays/canary` adds one pod of the new image per service; callers'
    per-request balancing over the headless Service then sends it its share, and no stable
    Deployment may count it (or it, them) as its own."""
    prod, canary = built["prod"], by_kind(built["canary"], "Deployment")
    services, policies = by_kind(prod, "Service"), by_kind(prod, "NetworkPolicy")
    stable = by_kind(prod, "Deployment")
    assert canary.keys() == {f"{NAMES[s]}-next" for s in SERVICES}
    assert [o["kind"] for o in built["canary"]] == ["Deployment"] * len(SERVICES)
    for service in SERVICES:
        name = NAMES[service]
        new = canary[f"{name}-next"]
        assert new["metadata"]["namespace"] == "bentochain"
        assert new["spec"]["replicas"] == 1
        # The release workflow waits on `-l bentochain.dev/track=next` (and `!=next`).
        assert new["metadata"]["labels"][TRACK_LABEL] == "next"
        assert stable[name]["metadata"]["labels"][TRACK_LABEL] != "next"
        pod = new["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert selects(services[name]["spec"]["selector"], labels), service
        assert selects(policies[f"{name}-ingress"]["spec"]["podSelector"]["matchLabels"], labels)
        for other in stable.values():
            other_labels = other["spec"]["template"]["metadata"]["labels"]
            assert not selects(other["spec"]["selector"]["matchLabels"], labels)
            assert not selects(new["spec"]["selector"]["matchLabels"], other_labels)
        # The same server as the stable pods, on on-demand nodes where the service uses spot.
        same = stable[name]["spec"]["template"]["spec"]
        assert pod["spec"]["containers"] == same["containers"]
        assert pod["spec"].get("affinity") == same.get("affinity")
        assert pod["spec"]["containers"][0]["image"] == DEFAULT_IMAGE


def test_a_gateway_metrics_port_is_scraped_there_and_only_by_prometheus() -> None:
    moved = load_settings(PRODUCTION_PROFILE, environ={"BENTOCHAIN_GATEWAY__METRICS_PORT": "9464"})
    gateway = render(moved, PRODUCTION_PROFILE)[f"{NAMES['Gateway']}.yaml"]
    (deployment,) = [o for o in gateway if o["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9464"
    (server,) = template["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in server["ports"]
    (service,) = [o for o in gateway if o["kind"] == "Service"]
    assert [p["port"] for p in service["spec"]["ports"]] == [3000]  # not behind the Service
    (policy,) = [o for o in gateway if o["kind"] == "NetworkPolicy"]
    public, scrape = policy["spec"]["ingress"]
    assert "from" not in public and scrape["ports"] == [{"port": 9464, "protocol": "TCP"}]
    assert scrape["from"][0]["namespaceSelector"]  # the scraper's namespace only
