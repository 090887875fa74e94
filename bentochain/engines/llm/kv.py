"""KV memory for the running sequences, and the attention that reads it.

Memory is counted in blocks of ``block_size`` tokens from a budget of ``kv_blocks`` blocks set by
configuration, never by the free memory of the machine, so a server's footprint is known before
it starts. A sequence reserves the blocks for its prompt and its whole completion when it is
admitted, so a running generation never runs out of memory half-way.

Each sequence keeps its keys and values in buffers of its own, so attention reads them in place:
a decode step costs one small attention call per sequence and layer, and no gather of every
sequence's history into a padded batch (which cost more than the model's matrix products).
One sequence's attention never depends on what else is in the batch.

All of it is allocated and written once, when the engine starts (``KVArena``), as vLLM
preallocates its KV cache: memory fresh from the system costs a page fault for every 4 KiB first
written, and a served engine that allocated each sequence's buffers as it came spent a fifth of
its CPU in the kernel zeroing pages while the other core waited for it (docs/decisions.md).
A finished sequence's buffers are kept for the next sequence of about the same size
(``BufferPool``), so a prompt that starts like the previous one finds its blocks in place.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

ATTENTION = "bentochain_sequences"
"""Name of the attention implementation the engine loads models with."""


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class BlockBudget:
    """How many KV blocks are lent out to sequences, kept by the prefix cache or held by freed
    buffers waiting for reuse, of a fixed total.

    Cached and pooled blocks are memory too, but can be given up: a sequence that needs them
    gets them first.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.cached = 0
        self.pooled = 0

    @property
    def free(self) -> int:
        return self.total - self.used - self.cached - self.pooled

    def take(self, count: int) -> bool:
        if count > self.free:
            return False
        self.used += count
        return True

    def give_back(self, count: int) -> None:
        self.used -= count


@dataclass(eq=False)
class SequenceKV:
    """One sequence's keys and values: [layers, kv_heads, capacity, head_dim] each.

    ``keys[layer]`` and ``values[layer]`` are views of one layer; the whole tensors let a run of
    cached blocks be copied in with one operation. ``blocks`` names the full prompt blocks at
    the buffer's start whose KV it holds (their prefix keys, see ``prefix.block_keys``): a
    buffer lent again to a prompt that starts alike already holds that much of it.
    """

    all_keys: torch.Tensor
    all_values: torch.Tensor
    length: int = 0
    blocks: tuple[bytes, ...] = ()
    span: tuple[int, int] | None = None
    """The run of ``KVArena`` blocks (first, count) the buffers are; None for memory of their
    own."""

    def __post_init__(self) -> None:
        self.keys = list(self.all_keys.unbind(0))
        self.values = list(self.all_values.unbind(0))


def shared_blocks(a: Sequence[bytes], b: Sequence[bytes]) -> int:
    """How many prefix keys two runs of blocks have in common from their start."""
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


@dataclass(frozen=True)
class KVLayout:
    """The shape of a model's KV memory: what one token costs and how a sequence's is made."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, config: Any, dtype: torch.dtype, device: torch.device) -> KVLayout:
        """The layout of a transformers text config (GQA and explicit head_dim included)."""
        heads = int(config.num_attention_heads)
        return cls(
            layers=int(config.num_hidden_layers),
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
            dtype=dtype,
            device=device,
        )

    @property
    def bytes_per_token(self) -> int:
        width = torch.empty(0, dtype=self.dtype).element_size()
        return 2 * self.layers * self.kv_heads * self.head_dim * width

    def allocate(self, capacity: int) -> SequenceKV:
        shape = (self.layers, self.kv_heads, capacity, self.head_dim)
        return SequenceKV(
            all_keys=torch.empty(shape, dtype=self.dtype, device=self.device),
            all_values=torch.empty(shape, dtype=self.dtype, device=self.device),
        )


class KVArena:
    """The KV memory of the whole budget, in one piece per keys and values, written at start.

    It is handed out in runs of whole blocks: a sequence's buffers are one run (so attention
    reads them in place, see ``SequenceKV``), a cached prefix block is a run of one. A run
    comes from the smallest free stretch it fits in, and a freed run merges with its free
    neighbours. Every block lent, kept or cached is counted in the ``BlockBudget`` first, so a
    run is found whenever the budget allows, unless the free blocks lie in pieces too short:
    then the sequence gets memory of its own (``KVLayout.allocate``), as before the arena.
    """

    def __init__(self, layout: KVLayout, blocks: int, block_size: int) -> None:
        self.layout = layout
        self.block_size = block_size
        self.block_elements = layout.layers * layout.kv_heads * block_size * layout.head_dim
        size = blocks * self.block_elements
        _check_fits(layout, blocks, block_size)
        # zeros, not empty: every page is written now, at start, instead of on first use.
        self._keys = torch.zeros(size, dtype=layout.dtype, device=layout.device)
        self._values = torch.zeros(size, dtype=layout.dtype, device=layout.device)
        self._free: list[tuple[int, int]] = [(0, blocks)] if blocks else []  # by first block
        self.free_blocks = blocks

    def sequence(self, blocks: int) -> SequenceKV:
        """Buffers for ``blocks`` blocks of a sequence's tokens."""
        first = self._take(blocks)
        if first is None:
            return self.layout.allocate(blocks * self.block_size)
        layout = self.layout
        shape = (layout.layers, layout.kv_heads, blocks * self.block_size, layout.head_dim)
        start, end = first * self.block_elements, (first + blocks) * self.block_elements
        return SequenceKV(
            all_keys=self._keys[start:end].view(shape),
            all_values=self._values[start:end].view(shape),
            span=(first, blocks),
        )

    def release(self, kv: SequenceKV) -> None:
        """Give ``kv``'s run back (once: the buffers must not be used after)."""
        if kv.span is None:
            return
        first, count = kv.span
        kv.span = None
        self.free_blocks += count
        at = bisect.bisect(self._free, (first, count))
        if at < len(self._free) and first + count == self._free[at][0]:
            count += self._free.pop(at)[1]
        if at and sum(self._free[at - 1]) == first:
            first, count = self._free[at - 1][0], self._free[at - 1][1] + count
            at -= 1
            del self._free[at]
        self._free.insert(at, (first, count))

    def _take(self, blocks: int) -> int | None:
        best: int | None = None
        for index, (_, size) in enumerate(self._free):
            if size >= blocks and (best is None or size < self._free[best][1]):
                best = index
                if size == blocks:
                    break
        if best is None:
            return None
        first, size = self._free[best]
        if size == blocks:
            del self._free[best]
        else:
            self._free[best] = (first + blocks, size - blocks)
        self.free_blocks -= blocks
        return first


def _check_fits(layout: KVLayout, blocks: int, block_size: int) -> None:
    """Refuse a KV budget larger than the memory available now, with what to change.

    On the CPU the arena's pages are written at start, and Linux would rather let that fill the
    machine and kill the process than refuse the allocation (CUDA refuses it by itself)."""
    if layout.device.type != "cpu":
        return
    import psutil

    needed = layout.bytes_per_token * blocks * block_size
    available = psutil.virtual_memory().available
    if needed > available:
        raise MemoryError(
            f"the LLM's KV budget needs {needed / 2**30:.1f} GiB "
            f"(llm.kv_cache.blocks = {blocks}, {layout.bytes_per_token} bytes a token) but "
            f"{available / 2**30:.1f} GiB of memory is available: lower llm.kv_cache.blocks"
        )


class BufferPool:
    """Buffers of finished sequences, lent again to new sequences of about the same size.

    A kept buffer counts in the budget (``pooled``) until it is lent again or dropped, so the
    memory held never exceeds ``kv_blocks``; it is the first thing given up when a sequence or
    the prefix cache needs memory. A sequence may get a buffer up to an eighth larger than it
    asked for, and then reserves all of it, so the budget stays exact.
    """

    SLACK = 8
    """A kept buffer of ``size`` blocks serves ``blocks`` when blocks ≤ size ≤ blocks × 9/8."""

    def __init__(self, budget: BlockBudget, arena: KVArena) -> None:
        self.budget = budget
        self.arena = arena
        self._kept: OrderedDict[int, tuple[SequenceKV, int]] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._kept)

    def reuse(self, blocks: int, prefix: Sequence[bytes] = ()) -> tuple[SequenceKV, int] | None:
        """A kept buffer that fits ``blocks`` and how many blocks it reserves, or None.

        Of those that fit, the one holding most of ``prefix`` (a prompt's cached blocks) at its
        start, then the smallest. Its blocks move from ``pooled`` to ``used``: they were
        counted already."""
        best: tuple[int, int, int] | None = None  # (-shared, size, key)
        for key, (kv, size) in self._kept.items():
            if not blocks <= size <= blocks + blocks // self.SLACK:
                continue
            rank = (-shared_blocks(kv.blocks, prefix), size, key)
            if best is None or rank[:2] < best[:2]:
                best = rank
        if best is None:
            return None
        kv, size = self._kept.pop(best[2])
        self.budget.pooled -= size
        self.budget.used += size
        kv.length = 0
        kv.blocks = kv.blocks[: -best[0]]  # what lies past the shared part will be overwritten
        return kv, size

    def keep(self, kv: SequenceKV, blocks: int) -> None:
        """A finished sequence's buffer and the ``blocks`` it reserved, for a later sequence."""
        self.budget.used -= blocks
        self.budget.pooled += blocks
        self._kept[id(kv)] = (kv, blocks)

    def drop(self, blocks: int) -> int:
        """Give up kept buffers, oldest first, until ``blocks`` blocks are free or none is
        left; return how many blocks were given up."""
        dropped = 0
        while self._kept and dropped < blocks:
            _, (kv, size) = self._kept.popitem(last=False)
            self.arena.release(kv)
            self.budget.pooled -= size
            dropped += size
        return dropped


class StepKV:
    """``past_key_values`` for one forward step: which sequence each batch row is.

    Attention layers call ``update`` with the step's new keys and values [rows, heads, new, dim];
    they are appended to each row's buffers. The attention function below then reads each row's
    whole history from its buffers.
    """

    is_compileable = False

    def __init__(self, rows: Sequence[SequenceKV], new: int) -> None:
        self.rows = rows
        self.new = new

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.rows[0].length
        for r, row in enumerate(self.rows):
            start = row.length
            row.keys[layer_idx][:, start : start + self.new] = key_states[r]
            row.values[layer_idx][:, start : start + self.new] = value_states[r]
        return key_states, value_states

    def advance(self) -> None:
        """The step's tokens are now part of every row's history."""
        for row in self.rows:
            row.length += self.new

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


def sequence_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of each batch row over its own history (a transformers attention function).

    ``query`` is [rows, heads, new, dim]. A prefill brings a prompt, whole or after a prefix
    taken from the cache (causal attention over it and that prefix); a decode step brings one
    token per row (attention over all of the row's history).
    """
    step: StepKV | None = kwargs.pop("bentochain_step", None)
    if step is None:  # the model called outside the engine (generate(), a test): plain SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    layer = module.layer_idx
    new = query.shape[2]
    outputs = []
    for r, row in enumerate(step.rows):
        end = row.length + new
        k = row.keys[layer][:, :end].unsqueeze(0)
        v = row.values[layer][:, :end].unsqueeze(0)
        mask: torch.Tensor | None = None
        if new > 1 and row.length:
            # The rest of a prompt after a cached prefix: each new token sees the whole prefix
            # and the new tokens up to itself (SDPA's is_causal aligns to the top-left instead).
            mask = torch.ones(new, end, dtype=torch.bool, device=query.device).tril(row.length)
        outputs.append(
            F.scaled_dot_product_attention(
                query[r : r + 1],
                k,
                v,
                attn_mask=mask,
                is_causal=new > 1 and mask is None,
                scale=scaling,
                enable_gqa=query.shape[1] != k.shape[1],
            )
        )
    attended = torch.cat(outputs, dim=0) if len(outputs) > 1 else outputs[0]
    return attended.transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Make ``sequence_attention`` loadable as ``attn_implementation``; return its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, sequence_attention)
    return ATTENTION
