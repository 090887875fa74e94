"""Automatic prefix caching: the KV of prompt blocks, reused by later prompts that start alike.

Chat and chain traffic repeats long prefixes (a system prompt, the SQL chain's schema prompt, a
conversation's history). As in vLLM, every *full* block of a prompt is keyed by a hash of all the
tokens up to its end, so a key names one exact prefix; a new prompt takes the longest run of
cached blocks from its start and prefills only the rest.

Cached blocks live in the same fixed budget (and ``KVArena``) as the sequences' memory, are
read-only, and are
evicted least recently used when a sequence needs the memory. Sequences keep their KV in buffers
of their own (attention reads them in place, see ``kv``), so a hit copies the cached blocks into
the new sequence's buffer, which costs far less than computing them; blocks the buffer already
holds (lent again after a sequence with the same prefix) are not copied at all.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bentochain.engines.llm.kv import BlockBudget, BufferPool, KVArena, SequenceKV, shared_blocks


@dataclass(frozen=True)
class CachedBlock:
    memory: SequenceKV  # one block of the arena

    @property
    def keys(self) -> torch.Tensor:  # [layers, kv_heads, block_size, head_dim]
        return self.memory.all_keys

    @property
    def values(self) -> torch.Tensor:
        return self.memory.all_values


@dataclass(frozen=True)
class Hit:
    """The cached start of a prompt: ``tokens`` of it, in ``blocks``."""

    blocks: tuple[CachedBlock, ...]
    keys: tuple[bytes, ...]

    @property
    def count(self) -> int:
        return len(self.blocks)


NO_HIT = Hit((), ())


def block_keys(tokens: Sequence[int], block_size: int) -> list[bytes]:
    """The key of each full block of ``tokens``: a hash chained over every token before it."""
    keys: list[bytes] = []
    parent = b""
    for end in range(block_size, len(tokens) + 1, block_size):
        digest = hashlib.blake2b(parent, digest_size=16)
        digest.update(array("q", tokens[end - block_size : end]).tobytes())
        parent = digest.digest()
        keys.append(parent)
    return keys


class PrefixCache:
    """Full prompt blocks by prefix key, least recently used first."""

    def __init__(
        self,
        block_size: int,
        budget: BlockBudget,
        arena: KVArena,
        pool: BufferPool | None = None,
    ) -> None:
        self.block_size = block_size
        self.budget = budget
        self.arena = arena
        self.pool = pool
        self._blocks: OrderedDict[bytes, CachedBlock] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, tokens: Sequence[int]) -> Hit:
        """The longest cached run of blocks from the start of ``tokens``.

        At least one token is left to compute: its logits choose the first new token.
        """
        keys = block_keys(tokens[: len(tokens) - 1], self.block_size)
        found: list[CachedBlock] = []
        for key in keys:
            block = self._blocks.get(key)
            if block is None:
                break
            found.append(block)
        hit = Hit(tuple(found), tuple(keys[: len(found)]))
        self._touch(hit.keys)
        return hit

    def still_cached(self, hit: Hit) -> Hit:
        """The start of ``hit`` whose blocks are still cached (eviction takes the ends of
        prefixes first, see ``_touch``)."""
        count = 0
        for key, block in zip(hit.keys, hit.blocks, strict=True):
            if self._blocks.get(key) is not block:
                break
            count += 1
        return Hit(hit.blocks[:count], hit.keys[:count])

    def restore(self, hit: Hit, kv: SequenceKV) -> None:
        """Put a hit's blocks at the start of a new sequence's buffers (those not there yet)."""
        size = self.block_size
        held = shared_blocks(kv.blocks, hit.keys)
        for index in range(held, hit.count):  # in place: no concatenated copy first
            block = hit.blocks[index]
            kv.all_keys[:, :, index * size : (index + 1) * size] = block.keys
            kv.all_values[:, :, index * size : (index + 1) * size] = block.values
        kv.length = hit.count * size
        kv.blocks = hit.keys

    def store(self, tokens: Sequence[int], kv: SequenceKV) -> int:
        """Keep the full blocks of ``tokens`` that ``kv`` has computed; return how many are new.

        A block needs a free block of the budget; kept buffers (``pool``), then older cached
        blocks make room when none is free, and caching stops when nothing is left to give up
        (sequences hold the memory).
        """
        keys = block_keys(tokens[: kv.length], self.block_size)
        added = 0
        for index, key in enumerate(keys):
            if key in self._blocks:
                continue
            if not self.budget.free and not self._make_room(keys):
                break
            start, end = index * self.block_size, (index + 1) * self.block_size
            memory = self.arena.sequence(1)
            memory.all_keys.copy_(kv.all_keys[:, :, start:end])
            memory.all_values.copy_(kv.all_values[:, :, start:end])
            self._blocks[key] = CachedBlock(memory)
            self.budget.cached += 1
            added += 1
        self._touch(keys)
        kv.blocks = tuple(keys)
        return added

    def evict(self, count: int, keep: Sequence[bytes] = ()) -> int:
        """Drop up to ``count`` least recently used blocks (not those in ``keep``)."""
        spared = set(keep)
        dropped = 0
        for key in list(self._blocks):
            if dropped == count:
                break
            if key in spared:
                continue
            self.arena.release(self._blocks.pop(key).memory)
            self.budget.cached -= 1
            dropped += 1
        return dropped

    def _make_room(self, keys: Sequence[bytes]) -> bool:
        if self.pool is not None and self.pool.drop(1):
            return True
        return bool(self.evict(1, keep=keys))

    def clear(self) -> None:
        self.evict(len(self._blocks))

    def _touch(self, keys: Sequence[bytes]) -> None:
        # The last block of a run is touched first, its first block last: eviction then takes
        # the ends of prefixes before their starts (a block without its parent is never hit).
        for key in reversed(keys):
            if key in self._blocks:
                self._blocks.move_to_end(key)
