"""Linear layers whose weights are packed once, at load, for oneDNN's CPU matrix products.

``torch.nn.Linear`` on the CPU multiplies through the BLAS that torch was built with; on the
AMD EPYC this project is measured on, that path reaches about a third of what oneDNN does with a
weight reordered ahead of time into its blocked layout (2.3-2.7x faster for 1 to 256 rows of a
512x1664 layer, results equal to float rounding). vLLM's and IPEX's CPU backends make the same
move. The reorder happens once per weight; every forward pass then reads the packed copy.

The packed layout is opaque (it can be neither saved nor moved), so packing is an in-memory
transformation of a loaded model, never of what is stored, and is done only where it is sure to
work: on the CPU, with oneDNN present, for float32 and (on CPUs with bfloat16 support) bfloat16.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

PACKABLE_DTYPES = frozenset({torch.float32, torch.bfloat16})


class PackedLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` in oneDNN's packed layout (same inputs and outputs as the
    ``nn.Linear`` it replaces)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # Plain attributes, not parameters: an opaque oneDNN tensor can be neither saved in a
        # state dict nor moved, and nothing should try.
        self.packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias_values: torch.Tensor | None = (
            None if linear.bias is None else linear.bias.detach().contiguous()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self.packed, self.bias_values, "none", [], ""
        )
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this process can run packed linear layers for ``dtype`` on ``device``."""
    if device.type != "cpu" or dtype not in PACKABLE_DTYPES:
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    return dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pack_linear_layers(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` (on the CPU) by a ``PackedLinear``; return how many.

    A layer whose weight is shared with another module (tied input embeddings) is packed as a
    copy, and the embedding keeps its own weight.
    """
    targets: list[tuple[Any, str, nn.Linear]] = []
    for module in model.modules():
        for child_name, child in module.named_children():
            if type(child) is nn.Linear:
                targets.append((module, child_name, child))
    for parent, child_name, linear in targets:
        setattr(parent, child_name, PackedLinear(linear))
    return len(targets)


def pack_if_possible(model: nn.Module) -> int:
    """``pack_linear_layers`` where ``can_pack`` says it works (the model's own device and
    dtype); 0 elsewhere. Call it on the thread that will run the model."""
    parameter = next(model.parameters(), None)
    if parameter is None or not can_pack(parameter.device, parameter.dtype):
        return 0
    packed = pack_linear_layers(model)
    logger.info("packed %d linear layers of %s for oneDNN", packed, type(model).__name__)
    return packed
