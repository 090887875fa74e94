"""Linear layers packed for oneDNN: the same answers as ``nn.Linear``, and the engine uses them."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from bentochain.engines.llm.engine import EngineConfig, LLMEngine
from bentochain.engines.llm.kv import KVLayout
from bentochain.engines.llm.runner import ModelRunner
from bentochain.engines.packing import PackedLinear, can_pack, pack_linear_layers

pytestmark = pytest.mark.skipif(
    not can_pack(torch.device("cpu"), torch.float32), reason="torch was built without oneDNN"
)


def test_a_packed_layer_computes_what_the_linear_layer_did() -> None:
    torch.manual_seed(0)
    for bias in (True, False):
        linear = nn.Linear(96, 40, bias=bias)
        packed = PackedLinear(linear)
        for shape in ((1, 96), (7, 96), (3, 5, 96)):
            x = torch.randn(*shape)
            with torch.inference_mode():
                torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)
        # A view that is not contiguous (what a transpose hands the next layer) works too.
        x = torch.randn(96, 4).t()
        with torch.inference_mode():
            torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)


def test_packing_replaces_every_linear_layer_and_nothing_else() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 3)))
    assert pack_linear_layers(model) == 2
    kinds = [type(m) for m in model.modules()]
    assert nn.Linear not in kinds and kinds.count(PackedLinear) == 2
    assert isinstance(model[0], nn.Embedding)


def test_only_the_cpu_and_packable_dtypes_are_packed() -> None:
    assert not can_pack(torch.device("cpu"), torch.float16)
    assert not can_pack(torch.device("meta"), torch.float32)


def test_the_engine_packs_by_default_and_its_logits_match_the_unpacked_model(
    demo_dir: Path,
) -> None:
    config = EngineConfig(kv_blocks=64)
    packed = LLMEngine(demo_dir / "llama-tiny", config)
    plain = LLMEngine(demo_dir / "llama-tiny", replace(config, packed_weights=False))
    try:
        assert any(isinstance(m, PackedLinear) for m in packed.model.modules())
        assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
        ids = packed.tokenizer("The cat sleeps on the warm chair.")["input_ids"]
        logits = []
        for engine in (packed, plain):
            layout = KVLayout.of(engine.model.config, torch.float32, torch.device("cpu"))
            kv = layout.allocate(len(ids) + 1)
            runner = ModelRunner(engine.model, torch.device("cpu"))
            first = runner.forward([kv], [ids])
            logits.append(torch.cat([first, runner.forward([kv], [[int(first.argmax())]])]))
        torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)
    finally:
        packed.close()
        plain.close()


def test_a_model_that_cannot_load_fails_the_engine_constructor(
    demo_dir: Path, tmp_path: Path
) -> None:
    """The model loads on the engine's thread; its failure still reaches the caller."""
    broken = tmp_path / "broken"
    shutil.copytree(demo_dir / "llama-tiny", broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match=r"(?i)safetensors|header|deserializ"):
        LLMEngine(broken, EngineConfig(kv_blocks=64))
