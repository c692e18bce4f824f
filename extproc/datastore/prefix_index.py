"""Approximate prefix index over request text, learned from this server's own routing decisions.

Like the Gateway API Inference Extension's prefix scorer: the prompt's UTF-8 bytes are cut into blocks of
``block_bytes`` (16 tokens x ~4 bytes, matching vLLM's 16-token KV blocks), each block's hash chains its
parent's, and every instance keeps an LRU of the block hashes of the prompts routed to it, bounded
by ``capacity_blocks``. A lookup walks the prompt's chain and reports, per instance, how many leading blocks it
has seen — an estimate of how much of the prompt that instance still holds in its prefix cache.

The chained hash is ``zlib.crc32(block, parent)``, i.e. the CRC-32 of the whole prefix up to that block:
~0.4 µs per block, 5x cheaper than hashing tuples. At 32 bits, a false match needs a collision among the
blocks an instance remembers (~1e-5 per probe at the default capacity); a rare false match only costs one
less-than-ideal placement.

Cost: O(prompt length) hashing plus one dict probe per block and instance. Memory: at most ``capacity_blocks``
entries per instance, ~140 bytes each (measured with tracemalloc), reported in a metric.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from extproc.datastore.poller import BackendLoad

DEFAULT_BLOCK_BYTES = 64
# ~4 bytes of English text per token (Llama-3's tokenizer; the approximate tokenizer's rule): a block is ~16
# tokens, one vLLM KV block.
CHARS_PER_TOKEN = 4
TOKENS_PER_BLOCK = DEFAULT_BLOCK_BYTES // CHARS_PER_TOKEN
DEFAULT_CAPACITY_BLOCKS = 31_250  # the GIE default per pod
# Only the start of very long prompts is indexed: matching cost stays bounded.
DEFAULT_MAX_BLOCKS = 2_048
BYTES_PER_ENTRY = 140  # an OrderedDict entry with an int key (tracemalloc, 100k entries)


def block_hashes(text: str, block_bytes: int = DEFAULT_BLOCK_BYTES, max_blocks: int = DEFAULT_MAX_BLOCKS) -> list[int]:
    """Chained hashes of the full blocks of ``text`` (a trailing partial block is not cached by vLLM either)."""
    data = memoryview(text.encode())
    end = min(len(data) // block_bytes, max_blocks) * block_bytes
    hashes: list[int] = []
    parent = 0
    crc32 = zlib.crc32
    for start in range(0, end, block_bytes):
        parent = crc32(data[start:start + block_bytes], parent)
        hashes.append(parent)
    return hashes


class PrefixIndex:
    """Per instance an LRU of block hashes. The bound is ``capacity_blocks``, or, once the instance reports its KV
    size (``set_capacity``), that many blocks: the index then forgets what the instance's own LRU evicts. A
    response's generated tokens fill KV too, so ``occupy`` pushes that many anonymous blocks in."""

    def __init__(self, instances: Sequence[str], capacity_blocks: int = DEFAULT_CAPACITY_BLOCKS) -> None:
        self.capacity_blocks = capacity_blocks
        self._blocks: dict[str, OrderedDict[int, None]] = {i: OrderedDict() for i in instances}
        self._capacity = dict.fromkeys(instances, capacity_blocks)
        self._anonymous = -1  # keys of occupy()'s blocks: negative, never a CRC-32 (those are >= 0)

    def add(self, instance: str) -> None:
        """An instance joined the fleet (discovery): it holds nothing yet."""
        if instance not in self._blocks:
            self._blocks[instance] = OrderedDict()
            self._capacity[instance] = self.capacity_blocks

    def set_capacity(self, instance: str, blocks: int) -> None:
        """The instance's KV capacity in blocks (from its metrics); never above ``capacity_blocks``."""
        if instance in self._capacity and blocks > 0:
            self._capacity[instance] = min(blocks, self.capacity_blocks)

    def capacities_from(self, snapshot: Mapping[str, BackendLoad]) -> None:
        for instance, load in snapshot.items():
            if load.kv_capacity_tokens:
                self.set_capacity(instance, int(load.kv_capacity_tokens) // TOKENS_PER_BLOCK)

    def occupy(self, instance: str, blocks: int) -> None:
        """``blocks`` KV blocks filled on ``instance`` by something no prompt will match (generated tokens)."""
        lru = self._blocks.get(instance)
        if lru is None or blocks <= 0:
            return
        for _ in range(min(blocks, self._capacity[instance])):
            lru[self._anonymous] = None
            self._anonymous -= 1
        self._trim(instance, lru)

    def _trim(self, instance: str, lru: OrderedDict[int, None]) -> None:
        capacity = self._capacity[instance]
        while len(lru) > capacity:
            lru.popitem(last=False)

    def match(self, hashes: Sequence[int]) -> dict[str, int]:
        """Leading blocks of the chain each instance has seen."""
        matches: dict[str, int] = {}
        for instance, blocks in self._blocks.items():
            count = 0
            for h in hashes:
                if h not in blocks:
                    break
                count += 1
            matches[instance] = count
        return matches

    def learn(self, instance: str, hashes: Sequence[int]) -> None:
        """Record that ``instance`` now holds this prompt's blocks (most recently used)."""
        blocks = self._blocks[instance]
        # Tail first, so a prompt's leading blocks are the most recent and eviction trims chains from their
        # end (as vLLM frees a request's blocks tail-first) instead of breaking them at the start.
        for h in reversed(hashes):
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
        self._trim(instance, blocks)

    def forget(self, instance: str) -> None:
        """The instance restarted or died: its cache is gone."""
        self._blocks[instance].clear()

    def size(self, instance: str) -> int:
        return len(self._blocks[instance])

    def entries(self) -> int:
        return sum(len(b) for b in self._blocks.values())

    def approx_bytes(self) -> int:
        return self.entries() * BYTES_PER_ENTRY
