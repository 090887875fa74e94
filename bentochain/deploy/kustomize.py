"""A kustomize base and its overlays, from the profiles they run.

The base is the offline default profile, which runs on any cluster (CPU, demo weights); the
``dev`` overlay only names a namespace and an image. The ``prod`` overlay is the production
profile expressed as the difference from the base: strategic-merge patches of what changed,
the objects only production has (spot Deployments), and deletions. A test builds the overlay
with ``kubectl kustomize`` and checks it equals the production profile rendered whole, so the
patches can never drift from the profile. The ``canary`` overlay is a release's first pod per
service, applied beside ``prod`` before ``prod`` itself takes the new image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bentochain.config.schema import Settings
from bentochain.deploy.kubernetes import IMAGE, Object, adapter_rules, release_canaries, render

HEADER = "# Rendered by `bentochain deploy k8s` from the profiles; do not edit by hand.\n"
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}
"""Lists that strategic merge patches merge element by element, and the key they match on;
every other list in these objects is replaced whole."""


@dataclass(frozen=True)
class Overlay:
    namespace: str
    image: str


def dump(objects: list[Object]) -> str:
    return HEADER + yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def identity(obj: Object) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def merge_patch(old: Any, new: Any, field: str = "") -> Any:
    """What turns ``old`` into ``new`` as a strategic merge patch (``None`` deletes a key)."""
    if isinstance(old, dict) and isinstance(new, dict):
        patch: dict[str, Any] = {}
        for name, value in new.items():
            if name not in old:
                patch[name] = value
            elif old[name] != value:
                patch[name] = merge_patch(old[name], value, name)
        for name in old:
            if name not in new:
                patch[name] = None
        return patch
    merge_key = MERGE_KEYS.get(field)
    if merge_key and isinstance(old, list) and isinstance(new, list):
        before = {item[merge_key]: item for item in old}
        after = {item[merge_key]: item for item in new}
        if list(before) != [k for k in after if k in before]:
            return new  # reordered: a merge keeps the old order, so replace it
        items: list[Any] = []
        for k, item in after.items():
            if k not in before:
                items.append(item)
            elif before[k] != item:
                items.append({merge_key: k, **merge_patch(before[k], item)})
        items += [{merge_key: k, "$patch": "delete"} for k in before if k not in after]
        return items
    return new


def split_image(image: str) -> dict[str, str]:
    """kustomize's ``images`` entry pointing the base's name at ``image``."""
    name, at, digest = image.partition("@")
    if at:
        return {"name": IMAGE, "newName": name, "digest": digest}
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return {"name": IMAGE, "newName": name[:colon], "newTag": name[colon + 1 :]}
    return {"name": IMAGE, "newName": name}


def kustomization(**fields: Any) -> str:
    body = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **fields}
    return HEADER + yaml.safe_dump(body, sort_keys=False)


def layout(
    base: tuple[Any, Path],
    prod: tuple[Any, Path],
    dev_overlay: Overlay,
    prod_overlay: Overlay,
) -> dict[str, str]:
    """Every file of ``deploy/k8s``, by its path relative to it."""
    base_files = render(*base)
    prod_objects = [obj for objs in render(*prod).values() for obj in objs]
    files: dict[str, str] = {f"base/{name}": dump(objs) for name, objs in base_files.items()}
    files["base/kustomization.yaml"] = kustomization(resources=sorted(base_files))

    files["overlays/dev/kustomization.yaml"] = kustomization(
        namespace=dev_overlay.namespace,
        resources=["../../base", "namespace.yaml"],
        images=[split_image(dev_overlay.image)],
    )
    files["overlays/dev/namespace.yaml"] = dump([namespace(dev_overlay.namespace)])

    in_base = {identity(obj): obj for objs in base_files.values() for obj in objs}
    in_prod = {identity(obj): obj for obj in prod_objects}
    patches: list[Object] = []
    for ident, new in in_prod.items():
        old = in_base.get(ident)
        if old is not None and old != new:
            patch = merge_patch(old, new)
            patch.pop("apiVersion", None)
            patch.pop("kind", None)
            meta = patch.pop("metadata", {})
            patches.append(
                {
                    "apiVersion": new["apiVersion"],
                    "kind": new["kind"],
                    "metadata": {**meta, "name": ident[1]},
                    **patch,
                }
            )
    for ident, old in in_base.items():
        if ident not in in_prod:
            patches.append(
                {
                    "apiVersion": old["apiVersion"],
                    "kind": old["kind"],
                    "metadata": {"name": ident[1]},
                    "$patch": "delete",
                }
            )
    added = [obj for ident, obj in in_prod.items() if ident not in in_base]
    resources = ["../../base", "namespace.yaml"]
    if added:
        files["overlays/prod/added.yaml"] = dump(added)
        resources.append("added.yaml")
    patch_files: list[dict[str, str]] = []
    for patch in patches:
        name = f"patches/{patch['kind'].lower()}-{patch['metadata']['name']}.yaml"
        files[f"overlays/prod/{name}"] = dump([patch])
        patch_files.append({"path": name})
    files["overlays/prod/kustomization.yaml"] = kustomization(
        namespace=prod_overlay.namespace,
        resources=resources,
        images=[split_image(prod_overlay.image)],
        patches=patch_files,
    )
    files["overlays/prod/namespace.yaml"] = dump([namespace(prod_overlay.namespace)])
    files["overlays/canary/kustomization.yaml"] = kustomization(
        namespace=prod_overlay.namespace,
        resources=["deployments.yaml"],
        images=[split_image(prod_overlay.image)],
    )
    files["overlays/canary/deployments.yaml"] = dump(release_canaries(*prod))
    files["prometheus-adapter/values.yaml"] = HEADER + yaml.safe_dump(
        adapter_rules(), sort_keys=False
    )
    files.update(monitoring_files(prod[0]))
    return files


def monitoring_files(settings: Settings) -> dict[str, str]:
    """``monitoring/``: the SLO rules and the dashboard, and the ConfigMaps that carry them to
    a Prometheus and a Grafana (its dashboard sidecar picks the labelled one up)."""
    from bentochain.deploy.monitoring import dashboard, rules

    generated = {
        "disableNameSuffixHash": True,
        "labels": {"app.kubernetes.io/part-of": "bentochain"},
    }
    return {
        "monitoring/prometheus-rules.yaml": HEADER
        + yaml.safe_dump(rules(settings), sort_keys=False),
        "monitoring/grafana-dashboard.json": json.dumps(dashboard(settings), indent=2) + "\n",
        "monitoring/kustomization.yaml": kustomization(
            generatorOptions=generated,
            configMapGenerator=[
                {"name": "bentochain-prometheus-rules", "files": ["prometheus-rules.yaml"]},
                {
                    "name": "bentochain-grafana-dashboard",
                    "files": ["grafana-dashboard.json"],
                    "options": {"labels": {"grafana_dashboard": "1"}},
                },
            ],
        ),
    }


def namespace(name: str) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "bentochain"}},
    }


def write(out: Path, files: Mapping[str, str]) -> list[Path]:
    """Write ``files`` under ``out``, removing rendered files that no longer exist."""
    out.mkdir(parents=True, exist_ok=True)
    for old in sorted(out.rglob("*.yaml")):
        if old.relative_to(out).as_posix() not in files and old.read_text().startswith(HEADER):
            old.unlink()
    written = []
    for name, text in sorted(files.items()):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
