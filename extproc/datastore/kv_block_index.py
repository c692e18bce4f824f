"""Which KV blocks each instance holds, learned from its vLLM KV events: a bounded index with a fast prefix match.

One dict maps a block hash (vLLM's 64-bit external hash) to a bit mask of the instances holding it, so
:meth:`KVBlockIndex.match` probes the dict once per prompt block whatever the number of instances, and a block
cached on several instances is stored once. Each instance also keeps the order its blocks were stored in (a
deque of the same int objects), for the memory bound: beyond ``max_blocks`` (instance, block) pairs in all,
the oldest block of the instance holding the most is dropped. vLLM's own ``BlockRemoved`` events normally keep
the index far below the bound; it only matters when removals are missed or the fleet's KV exceeds it.

Clearing an instance (``AllBlocksCleared``, a resync, the instance going down) is O(1): the instance gets a
fresh bit at once and :meth:`KVBlockIndex.sweep` removes the old bit from the dict a bounded number of blocks
at a time, so a million-block clear never stalls the event loop.

Memory: :data:`BYTES_PER_BLOCK` per (instance, block) held, measured with tracemalloc on CPython 3.11-3.13
(the dict slot and the int key, ~80 bytes, plus the deque slot, 8 bytes; a block also held by a second
instance costs only its deque slot): 1M blocks ~ 100 MB.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate, repeat, takewhile
from operator import and_
from typing import Final

__all__ = ["BYTES_PER_BLOCK", "DEFAULT_MAX_BLOCKS", "SWEEP_BATCH", "KVBlockIndex"]

# Measured: tests/unit/test_kv_block_index.py::test_bytes_per_block_is_as_documented (tracemalloc, 200k distinct
# 64-bit hashes on one instance).
BYTES_PER_BLOCK: Final = 100
DEFAULT_MAX_BLOCKS: Final = 1_000_000
# Blocks of a cleared instance whose stale bit one sweep step removes.
SWEEP_BATCH: Final = 20_000


class KVBlockIndex:
    """``instance -> {block hash}`` with a global bound; pure and synchronous (the KV-event consumer feeds it)."""

    def __init__(self, instances: Iterable[str] = (), *, max_blocks: int = DEFAULT_MAX_BLOCKS) -> None:
        if max_blocks < 1:
            raise ValueError("max_blocks must be >= 1")
        self.max_blocks = max_blocks
        self._masks: dict[int, int] = {}
        self._bit: dict[str, int] = {}  # instance -> its current bit
        self._order: dict[str, deque[int]] = {}  # instance -> hashes in the order stored (may hold stale ones)
        self._count: dict[str, int] = {}  # instance -> blocks held
        self._free_bits: list[int] = []
        self._next_bit = 0
        self._dirty: list[tuple[int, deque[int]]] = []  # (old bit, its hashes) left for sweep()
        self.total = 0
        self.evicted: dict[str, int] = {}  # blocks dropped by the bound, per instance (monotonic)
        for instance in instances:
            self.add_instance(instance)

    # --- instances --------------------------------------------------------------------------------------
    def add_instance(self, instance: str) -> None:
        if instance in self._bit:
            return
        self._bit[instance] = self._new_bit()
        self._order[instance] = deque()
        self._count[instance] = 0
        self.evicted.setdefault(instance, 0)

    def _new_bit(self) -> int:
        if self._free_bits:
            return self._free_bits.pop()
        bit = 1 << self._next_bit
        self._next_bit += 1
        return bit

    @property
    def instances(self) -> tuple[str, ...]:
        return tuple(self._bit)

    def blocks(self, instance: str) -> int:
        return self._count.get(instance, 0)

    def __contains__(self, key: object) -> bool:
        """``(instance, block_hash) in index``."""
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        instance, block = key
        bit = self._bit.get(instance)
        return bit is not None and bool(self._masks.get(block, 0) & bit)

    # --- events -----------------------------------------------------------------------------------------
    def store(self, instance: str, hashes: Iterable[int]) -> None:
        """``BlockStored``: the instance now holds these blocks."""
        bit = self._bit.get(instance)
        if bit is None:
            self.add_instance(instance)
            bit = self._bit[instance]
        masks, order = self._masks, self._order[instance]
        added = 0
        for h in hashes:
            mask = masks.get(h, 0)
            if not mask & bit:
                masks[h] = mask | bit
                order.append(h)
                added += 1
        if added:
            self._count[instance] += added
            self.total += added
            if len(order) > 2 * self._count[instance] + 1024:
                self._compact(instance)
            if self.total > self.max_blocks:
                self._enforce_bound()

    def remove(self, instance: str, hashes: Iterable[int]) -> None:
        """``BlockRemoved``: the instance evicted these blocks (unknown ones are ignored)."""
        bit = self._bit.get(instance)
        if bit is None:
            return
        masks = self._masks
        removed = 0
        for h in hashes:
            mask = masks.get(h, 0)
            if mask & bit:
                mask &= ~bit
                if mask:
                    masks[h] = mask
                else:
                    del masks[h]
                removed += 1
        if removed:
            self._count[instance] -= removed
            self.total -= removed
            order = self._order[instance]
            if len(order) > 2 * self._count[instance] + 1024:
                self._compact(instance)

    def clear(self, instance: str) -> None:
        """``AllBlocksCleared``, a resync or the instance going down: it holds nothing (O(1); see sweep)."""
        bit = self._bit.get(instance)
        if bit is None:
            return
        order = self._order[instance]
        if order:
            self._dirty.append((bit, order))
            self._bit[instance] = self._new_bit()
            self._order[instance] = deque()
        self.total -= self._count[instance]
        self._count[instance] = 0

    def sweep(self, budget: int = SWEEP_BATCH) -> int:
        """Remove up to ``budget`` stale entries of cleared instances; returns how many are left to sweep."""
        masks = self._masks
        while self._dirty and budget > 0:
            bit, order = self._dirty[-1]
            clear = ~bit
            while order and budget > 0:
                h = order.popleft()
                budget -= 1
                mask = masks.get(h, 0)
                if mask & bit:
                    mask &= clear
                    if mask:
                        masks[h] = mask
                    else:
                        del masks[h]
            if not order:
                self._dirty.pop()
                self._free_bits.append(bit)
        return sum(len(order) for _, order in self._dirty)

    # --- bound ------------------------------------------------------------------------------------------
    def _compact(self, instance: str) -> None:
        """Rebuild an instance's order without hashes it no longer holds (and duplicates: keep the last)."""
        bit, masks = self._bit[instance], self._masks
        seen: set[int] = set()
        kept: list[int] = []
        for h in reversed(self._order[instance]):
            if h not in seen and masks.get(h, 0) & bit:
                seen.add(h)
                kept.append(h)
        kept.reverse()
        self._order[instance] = deque(kept)

    def _enforce_bound(self) -> None:
        masks = self._masks
        while self.total > self.max_blocks:
            instance = max(self._count, key=self._count.__getitem__)
            bit, order = self._bit[instance], self._order[instance]
            while order:
                h = order.popleft()
                mask = masks.get(h, 0)
                if mask & bit:
                    mask &= ~bit
                    if mask:
                        masks[h] = mask
                    else:
                        del masks[h]
                    self._count[instance] -= 1
                    self.total -= 1
                    self.evicted[instance] += 1
                    break
            else:  # pragma: no cover - count and order out of step would be a bug
                self.total -= self._count[instance]
                self._count[instance] = 0

    # --- reads ------------------------------------------------------------------------------------------
    def match(self, hashes: Sequence[int], instances: Iterable[str] | None = None) -> dict[str, int]:
        """Per instance (all, or those given), how many leading blocks of ``hashes`` it holds. One dict probe
        per block (in C) until no instance is left matching, then a bisection per instance."""
        bits: Mapping[str, int] = self._bit
        wanted = list(bits) if instances is None else [i for i in instances if i in bits]
        out = dict.fromkeys(wanted, 0)
        live = 0
        for instance in wanted:
            live |= bits[instance]
        if not live:
            return out
        # Running AND of the blocks' masks, from ``live``, stopping at the first block no wanted instance holds;
        # all in C (map, accumulate, takewhile). An instance's bit stays set for a prefix of ``running`` then
        # never again, so its match length is found by bisection.
        running = list(takewhile(bool, accumulate(map(self._masks.get, hashes, repeat(0)), and_, initial=live)))
        matched = len(running) - 1
        for instance in wanted:
            bit = bits[instance]
            if running[matched] & bit:
                out[instance] = matched
            elif matched > 1:
                out[instance] = bisect_left(running, True, 1, matched, key=lambda mask: not mask & bit) - 1
        return out
