"""vLLM's paged KV cache with automatic prefix caching, as bookkeeping only (pure, synchronous).

What is modelled, after vLLM V1 (``vllm/v1/core/kv_cache_manager.py``, ``block_pool.py``):

* The cache is ``num_blocks`` blocks of ``block_size`` tokens. A running request pins (ref-counts) its blocks.
* A *full* block is identified by a hash chaining its parent block's hash and its own token ids, so a block
  only matches when the whole prefix before it matches too. The hash function is pluggable (:mod:`.block_hash`:
  the simulator's BLAKE2b, or vLLM's ``sha256_cbor``); both are identical in every process.
* A prefix hit is the longest run of cached blocks from the start of the prompt, capped so that at most
  ``len(prompt) - 1`` tokens hit (vLLM always recomputes the last prompt token to get logits): at most
  ``(n - 1) // block_size`` blocks.
* Blocks with ref count 0 stay in the cache (still matchable) on one LRU free queue; taking a block for new
  work pops the least recently freed one and evicts its hash. A request's blocks are freed tail first, so the
  end of a chain is evicted before its beginning, as vLLM does.
* A block becomes matchable only once its tokens have been computed (:meth:`KVCache.commit`), not when it is
  allocated; a second copy of an already-cached block stays uncached, as in vLLM.
* Like vLLM, full blocks of *generated* tokens are cached too when the caller passes the output token ids in
  ``tokens`` (see :meth:`KVCache.allocate`): a follow-up turn whose prompt contains the previous answer hits it.

* Blocks are taken as the request needs them (:meth:`KVCache.grow`, vLLM's ``allocate_slots``): the engine
  asks for the blocks of the tokens it schedules this step, and preempts when they are missing.
* With ``record_events`` the cache records what vLLM's ``BlockPool`` puts on its ``kv_event_queue``:
  :class:`BlockStoredEvent` when full blocks become cached, :class:`BlockRemovedEvent` when a cached block is
  evicted (taken for new work), never when a request merely frees it, and :class:`AllBlocksClearedEvent` on
  :meth:`KVCache.reset`. :mod:`.kv_events` turns them into vLLM's wire format.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from .block_hash import BlockHasher, blake2b_block_hashes

__all__ = [
    "AllBlocksClearedEvent",
    "Allocation",
    "BlockRemovedEvent",
    "BlockStoredEvent",
    "CacheEvent",
    "KVCache",
    "KVCacheStats",
    "block_hashes",
]

# The default block hash (BLAKE2b); see :mod:`.block_hash` for vLLM's sha256_cbor.
block_hashes = blake2b_block_hashes


@dataclass(slots=True, frozen=True)
class BlockStoredEvent:
    """Full blocks of one request became cached: ``hashes[i]`` holds ``token_ids[i*bs:(i+1)*bs]``."""

    hashes: tuple[bytes, ...]
    parent: bytes | None  # hash of the block before the first one; None for a prompt's first block
    token_ids: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class BlockRemovedEvent:
    hashes: tuple[bytes, ...]


@dataclass(slots=True, frozen=True)
class AllBlocksClearedEvent:
    pass


CacheEvent = BlockStoredEvent | BlockRemovedEvent | AllBlocksClearedEvent


@dataclass(slots=True)
class Allocation:
    """The blocks pinned by one request. ``blocks[i]`` holds tokens ``[i*bs, (i+1)*bs)``."""

    request_id: str
    blocks: list[int]
    num_cached_tokens: int
    # Hashes of the full blocks of the request's known tokens (prompt, plus output if the caller passed it).
    hashes: list[bytes]
    # Blocks [0, num_committed) are cached or were found already cached under another block.
    num_committed: int
    tokens: Sequence[int] | None = None  # kept only when the cache records events (BlockStored token ids)


@dataclass(slots=True)
class KVCacheStats:
    queries: int = 0  # prompt tokens looked up (vllm:prefix_cache_queries)
    hits: int = 0  # of which found in the cache (vllm:prefix_cache_hits)
    requests: int = 0


@dataclass(slots=True)
class KVCache:
    """Prefix-cached block pool. All operations cost O(blocks of the request)."""

    num_blocks: int
    block_size: int = 16
    stats: KVCacheStats = field(default_factory=KVCacheStats)
    hasher: BlockHasher = blake2b_block_hashes
    record_events: bool = False
    events: list[CacheEvent] = field(default_factory=list, repr=False)
    _ref: list[int] = field(init=False, repr=False)
    _hash_of: list[bytes | None] = field(init=False, repr=False)
    _cached: dict[bytes, int] = field(init=False, repr=False)
    _free: OrderedDict[int, None] = field(init=False, repr=False)
    _allocs: dict[str, Allocation] = field(init=False, repr=False)
    _used: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self._ref = [0] * self.num_blocks
        self._hash_of = [None] * self.num_blocks
        self._cached = {}
        self._free = OrderedDict.fromkeys(range(self.num_blocks))
        self._allocs = {}
        self._used = 0

    # --- queries --------------------------------------------------------------------------------------------
    def hash_blocks(self, tokens: Sequence[int], limit: int | None = None,
                    extra_keys: tuple[str, ...] | None = None) -> list[bytes]:
        """Chained hashes of the full blocks of ``tokens`` with this cache's hash function (``extra_keys``: a LoRA
        adapter's name, which vLLM puts in every block's hash)."""
        if extra_keys:
            return self.hasher(tokens, self.block_size, limit, extra_keys)
        return self.hasher(tokens, self.block_size, limit)

    def take_events(self) -> list[CacheEvent]:
        """The events recorded since the last call (empty unless ``record_events``)."""
        events, self.events = self.events, []
        return events

    def num_hit_tokens(self, hashes: Sequence[bytes], num_prompt_tokens: int) -> int:
        """Tokens :meth:`allocate` would find cached for these hashes now. No side effects."""
        return len(self._hit_blocks(hashes, num_prompt_tokens)) * self.block_size

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _hit_blocks(self, hashes: Sequence[bytes], num_prompt_tokens: int) -> list[int]:
        limit = max(0, (num_prompt_tokens - 1) // self.block_size)
        hit: list[int] = []
        for h in hashes[:limit]:
            block = self._cached.get(h)
            if block is None:
                break
            hit.append(block)
        return hit

    def match(self, tokens: Sequence[int]) -> int:
        """Cached prefix length of ``tokens`` in tokens (a multiple of ``block_size``). No side effects."""
        limit = max(0, (len(tokens) - 1) // self.block_size)
        return len(self._hit_blocks(self.hash_blocks(tokens, limit), len(tokens))) * self.block_size

    def usage(self) -> float:
        """Fraction of blocks pinned by running requests (vllm:kv_cache_usage_perc); cached free blocks count
        as free, as in vLLM."""
        return self._used / self.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    # --- mutations ------------------------------------------------------------------------------------------
    def allocate(
        self,
        request_id: str,
        tokens: Sequence[int],
        extra_tokens: int = 0,
        *,
        num_prompt_tokens: int | None = None,
        hashes: Sequence[bytes] | None = None,
        num_tokens: int | None = None,
    ) -> Allocation | None:
        """Pin the cached prefix of the prompt and reserve new blocks for the rest plus ``extra_tokens``.

        ``tokens`` is the prompt, optionally followed by the output token ids the request will generate
        (then pass ``num_prompt_tokens``; blocks are reserved for ``len(tokens) + extra_tokens`` tokens and
        only the prompt is matched). ``num_tokens``, if given, reserves blocks for the first ``num_tokens``
        tokens only (at least the cached prefix); :meth:`grow` adds more later. ``hashes`` may pass
        precomputed :meth:`hash_blocks` of ``tokens``.
        Returns ``None`` (and changes nothing) when free + evictable blocks do not suffice: the request must
        wait. Counts the lookup in :attr:`stats` only when it succeeds, so a request waiting at the head of
        the queue is counted once.
        """
        if request_id in self._allocs:
            raise ValueError(f"request {request_id!r} already holds blocks")
        n_prompt = len(tokens) if num_prompt_tokens is None else num_prompt_tokens
        hashes = list(hashes) if hashes is not None else self.hash_blocks(tokens)
        hit = self._hit_blocks(hashes, n_prompt)
        total = self.blocks_needed(len(tokens) + extra_tokens if num_tokens is None else num_tokens)
        new = max(0, total - len(hit))
        # Hit blocks that sit in the free queue stop being free once pinned.
        hit_free = sum(1 for b in hit if self._ref[b] == 0)
        if new > len(self._free) - hit_free:
            return None
        for b in hit:
            if self._ref[b] == 0:
                del self._free[b]
                self._used += 1
            self._ref[b] += 1
        blocks = list(hit)
        for _ in range(new):
            blocks.append(self._take_free())
        alloc = Allocation(
            request_id, blocks, len(hit) * self.block_size, hashes, len(hit), tokens if self.record_events else None
        )
        self._allocs[request_id] = alloc
        self.stats.requests += 1
        self.stats.queries += n_prompt
        self.stats.hits += alloc.num_cached_tokens
        return alloc

    def _take_free(self) -> int:
        """Pop the least recently freed block, evicting its hash (vLLM: ``_maybe_evict_cached_block``)."""
        b, _ = self._free.popitem(last=False)
        h = self._hash_of[b]
        if h is not None:
            if self._cached.get(h) == b:
                del self._cached[h]
                if self.record_events:
                    self.events.append(BlockRemovedEvent((h,)))
            self._hash_of[b] = None
        self._ref[b] = 1
        self._used += 1
        return b

    def grow(self, request_id: str, num_tokens: int) -> bool:
        """Make the request hold blocks for its first ``num_tokens`` tokens (vLLM's ``allocate_slots``).
        False, changing nothing, when free + evictable blocks do not suffice."""
        alloc = self._allocs[request_id]
        need = self.blocks_needed(num_tokens) - len(alloc.blocks)
        if need <= 0:
            return True
        if need > len(self._free):
            return False
        for _ in range(need):
            alloc.blocks.append(self._take_free())
        return True

    def commit(self, request_id: str, num_computed_tokens: int) -> None:
        """Make the request's full blocks among its first ``num_computed_tokens`` tokens matchable."""
        alloc = self._allocs.get(request_id)
        if alloc is None:
            return
        upto = min(num_computed_tokens // self.block_size, len(alloc.hashes), len(alloc.blocks))
        run_start: int | None = None  # first block of the current run of newly cached blocks (for events)
        for i in range(alloc.num_committed, upto):
            h = alloc.hashes[i]
            if h not in self._cached:
                block = alloc.blocks[i]
                self._cached[h] = block
                self._hash_of[block] = h
                if run_start is None:
                    run_start = i
            elif run_start is not None:
                self._stored(alloc, run_start, i)
                run_start = None
        if run_start is not None:
            self._stored(alloc, run_start, upto)
        alloc.num_committed = max(alloc.num_committed, upto)

    def _stored(self, alloc: Allocation, start: int, end: int) -> None:
        # vLLM emits one BlockStored per cache_full_blocks call; a second copy of a block that is already
        # cached stays uncached here, so a run of newly cached blocks is cut around it.
        if not self.record_events or alloc.tokens is None:
            return
        bs = self.block_size
        self.events.append(
            BlockStoredEvent(
                tuple(alloc.hashes[start:end]),
                alloc.hashes[start - 1] if start > 0 else None,
                tuple(alloc.tokens[start * bs : end * bs]),
            )
        )

    def free(self, request_id: str) -> None:
        """Unpin the request's blocks; cached ones stay matchable until evicted. Unknown ids are ignored."""
        alloc = self._allocs.pop(request_id, None)
        if alloc is None:
            return
        for b in reversed(alloc.blocks):
            self._ref[b] -= 1
            if self._ref[b] == 0:
                # vLLM appends every freed block, cached or not, to the tail of one LRU queue.
                self._used -= 1
                self._free[b] = None

    def reset(self) -> int:
        """Drop every cached hash (vLLM's ``/reset_prefix_cache``). Pinned blocks stay allocated; blocks their
        owners compute from now on are cached again. Returns the number of hashes dropped."""
        dropped = len(self._cached)
        for b in self._cached.values():
            self._hash_of[b] = None
        self._cached.clear()
        if self.record_events:
            self.events.append(AllBlocksClearedEvent())
        return dropped
