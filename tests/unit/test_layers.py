"""Dependencies point one way: api → serving → engines / llms / sql / rag / models / config.

A module below never imports one above, not even for type hints: the upstream layer is where
services meet, and a circle through it (the gateway's errors imported by the LangChain
wrappers, say) would tie every layer to every other.
"""

from __future__ import annotations

import ast
from pathlib import Path

from bentochain.config.loader import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "bentochain"
LAYERS = {  # a package may import the ones of a lower rank
    "cli": 5,
    "deploy": 4,  # renders what serving runs, for a cluster
    "quality": 3,  # replays records against a served candidate
    "api": 4,
    "serving": 3,
    "llms": 2,
    "security": 2,  # API keys and their limits
    "observability": 2,  # reads the profile's config and the engines' events
    "engines": 1,
    "rag": 1,
    "sql": 2,
    "config": 1,
    "models": 0,
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "bentochain" and len(parts) > 1 else None


def test_no_module_imports_a_layer_above_its_own() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0].removesuffix(".py")
        if own not in LAYERS:
            continue
        for module in imports(path):
            other = layer(module)
            if other in LAYERS and other != own and LAYERS[other] >= LAYERS[own]:
                wrong.append(f"bentochain/{relative} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_every_package_has_a_layer() -> None:
    packages = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.name != "__init__.py"}
    packages -= {"__pycache__", "py.typed"}
    assert packages <= set(LAYERS), packages - set(LAYERS)
