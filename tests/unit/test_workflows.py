"""The GitHub workflows: valid for GitHub, clean under zizmor, and wired to what the project
really has (the test command, the smoke script, the overlays and labels the renderer writes)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bentochain.cli import PRODUCTION_PROFILE
from bentochain.config.loader import PROJECT_ROOT, load_settings
from bentochain.deploy.kubernetes import NEXT_TRACK, PART_OF, SOURCE, TRACK_LABEL

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
TOOLS = Path(sys.executable).parent  # check-jsonschema and zizmor come with the dev extras


def workflow(name: str) -> dict[str, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    loaded["on"] = loaded.pop(True, loaded.get("on"))  # YAML 1.1 reads the key `on` as True
    return loaded


def steps(flow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in flow["jobs"].values() for step in job["steps"]]


def scripts(flow: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in steps(flow))


def check_schema(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOOLS / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *paths],
        capture_output=True,
        text=True,
        timeout=120,
    )


def zizmor(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOOLS / "zizmor"), "--offline", "--persona", "auditor", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_both_workflows_exist() -> None:
    assert sorted(p.name for p in WORKFLOWS.glob("*.yml")) == ["ci.yml", "release.yml"]


def test_the_workflows_match_githubs_schema(tmp_path: Path) -> None:
    done = check_schema(*sorted(WORKFLOWS.glob("*.yml")))
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yml"  # the same check refuses a job without runs-on
    flow = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())
    del flow["jobs"]["test"]["runs-on"]
    broken.write_text(yaml.safe_dump(flow))
    assert check_schema(broken).returncode != 0


def test_zizmor_finds_nothing(tmp_path: Path) -> None:
    done = zizmor(*sorted(WORKFLOWS.glob("*.yml")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings to report" in done.stdout + done.stderr
    # The same audit flags an action pinned by tag instead of hash (so it really audits).
    unpinned = tmp_path / "ci.yml"
    text = (WORKFLOWS / "ci.yml").read_text()
    unpinned.write_text(re.sub(r"actions/checkout@[0-9a-f]{40}", "actions/checkout@v7", text))
    flagged = zizmor(unpinned)
    assert flagged.returncode != 0
    assert "unpinned-uses" in flagged.stdout + flagged.stderr


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_every_action_is_pinned_by_hash_with_its_version(name: str) -> None:
    used = [step["uses"] for step in steps(workflow(name)) if "uses" in step]
    assert used
    text = (WORKFLOWS / name).read_text()
    for action in used:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action
        assert re.search(rf"{re.escape(action)} # v\d+\.\d+\.\d+", text), f"{action}: no version"


def test_ci_runs_the_readmes_test_command_on_every_push_and_pull_request() -> None:
    flow = workflow("ci.yml")
    assert set(flow["on"]) == {"push", "pull_request"}
    assert flow["on"]["push"] is None  # every branch
    assert ".ci/run" in scripts(flow)
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text()
    (cache,) = [s for s in steps(flow) if s.get("uses", "").startswith("actions/cache@")]
    assert cache["with"]["path"] == ".venv"
    assert "pyproject.toml" in cache["with"]["key"] and "constraints.txt" in cache["with"]["key"]


def test_release_builds_renders_stages_canaries_and_promotes_in_order() -> None:
    flow = workflow("release.yml")
    assert list(flow["on"]) == ["push"]
    assert flow["on"]["push"] == {"tags": ["v*"]}
    jobs = flow["jobs"]
    assert list(jobs) == ["image", "staging", "gate", "canary", "promote"]
    assert [jobs[j].get("needs") for j in jobs] == [None, "image", "staging", "gate", "canary"]
    assert jobs["staging"]["environment"] == "staging"
    assert {jobs[j]["environment"] for j in ("gate", "canary", "promote")} == {"production"}

    def run(job: str) -> str:
        return "\n".join(step.get("run", "") for step in jobs[job]["steps"])

    build = run("image")
    for command in ("bentochain prepare", "bentoml build", "bentoml containerize", "docker push"):
        assert command in build, command
    assert "configs/production.yaml" in build and "configs/default.yaml" in build
    assert re.search(r"bentochain deploy k8s --out rendered --image \"\$prod\"", build)
    assert "kubectl apply -k rendered/overlays/prod" in run("staging")
    # Before any production traffic: the release answers production's requests well enough.
    gate = run("gate")
    assert gate.index(" cp ") < gate.index("replay records")
    assert "--target http://127.0.0.1:3000" in gate and "configs/production.yaml" in gate
    assert "kubectl apply -k rendered/overlays/canary" in run("canary")
    assert "kubectl delete -k rendered/overlays/canary" in run("canary")  # its rollback
    promote = run("promote")
    assert promote.index("apply -k rendered/overlays/prod") < promote.index(
        "delete -k rendered/overlays/canary"
    )
    for job in ("staging", "canary", "promote"):  # each rollout is smoke-tested
        assert ".ci/smoke http://127.0.0.1:3000" in run(job), job


def test_the_release_uses_what_the_renderer_writes() -> None:
    flow = workflow("release.yml")
    text = scripts(flow)
    production = load_settings(PRODUCTION_PROFILE, environ={})
    records = f"{SOURCE}/{production.observability.records.dir}"
    assert flow["jobs"]["gate"]["env"]["RECORDS"] == records  # where the gateway writes them
    for overlay in re.findall(r"rendered/overlays/(\w+)", text):
        assert (PROJECT_ROOT / "deploy" / "k8s" / "overlays" / overlay).is_dir(), overlay
    assert f"-l {TRACK_LABEL}={NEXT_TRACK}" in text
    assert f"-l app.kubernetes.io/part-of={PART_OF}," in text
    smoke = PROJECT_ROOT / ".ci" / "smoke"
    assert smoke.stat().st_mode & 0o111, ".ci/smoke must be executable"
    assert shutil.which("bash")
