import subprocess
import sys

import pytest

from benchmarks.simulator.kvcache import KVCache, block_hashes

BS = 4


def toks(*blocks: int, extra: int = 0) -> list[int]:
    """Tokens made of whole blocks: block value v -> [v*100 + i for i in range(BS)], plus ``extra`` tokens."""
    out = [v * 100 + i for v in blocks for i in range(BS)]
    return out + [9000 + i for i in range(extra)]


def cached(kv: KVCache, rid: str, tokens: list[int], extra: int = 0) -> None:
    """Run a request to completion: allocate, compute all its tokens, free."""
    assert kv.allocate(rid, tokens, extra) is not None
    kv.commit(rid, len(tokens))
    kv.free(rid)


def test_hashes_chain_and_are_stable_across_processes():
    tokens = toks(1, 2, 3)
    hs = block_hashes(tokens, BS)
    assert len(hs) == 3
    assert block_hashes(toks(9, 2, 3), BS)[1] != hs[1]  # same block, different parent
    code = f"from benchmarks.simulator.kvcache import block_hashes;print(block_hashes({tokens!r}, {BS})[-1].hex())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == hs[-1].hex()


def test_hit_is_longest_chain_of_full_blocks():
    kv = KVCache(num_blocks=64, block_size=BS)
    cached(kv, "a", toks(1, 2, 3, extra=2))
    assert kv.match(toks(1, 2, 3, 4)) == 3 * BS
    assert kv.match(toks(1, 2, 7, 4)) == 2 * BS
    assert kv.match(toks(5, 1, 2)) == 0


def test_partial_trailing_block_is_not_cached():
    kv = KVCache(num_blocks=64, block_size=BS)
    cached(kv, "a", toks(1, extra=3))
    assert kv.match([*toks(1, extra=3), 1, 2, 3]) == BS  # the 3 trailing tokens never formed a full block


def test_last_token_is_always_recomputed():
    kv = KVCache(num_blocks=64, block_size=BS)
    cached(kv, "a", toks(1, 2, 3))
    # Identical prompt of exactly 3 blocks: at most (12 - 1) // 4 = 2 blocks may hit.
    assert kv.match(toks(1, 2, 3)) == 2 * BS
    assert kv.match(toks(1, 2, 3, extra=1)) == 3 * BS
    assert kv.match(toks(1)) == 0


def test_a_divergent_block_breaks_the_chain_even_if_later_blocks_match():
    kv = KVCache(num_blocks=64, block_size=BS)
    cached(kv, "a", toks(1, 2, 3, 4, extra=1))
    assert kv.match(toks(1, 8, 3, 4, extra=1)) == BS


def test_blocks_become_matchable_only_once_computed():
    kv = KVCache(num_blocks=64, block_size=BS)
    assert kv.allocate("a", toks(1, 2, 3, extra=1)) is not None
    assert kv.match(toks(1, 2, 3, extra=1)) == 0
    kv.commit("a", 2 * BS + 1)
    assert kv.match(toks(1, 2, 3, extra=1)) == 2 * BS


def test_allocate_pins_hits_and_reserves_output():
    kv = KVCache(num_blocks=16, block_size=BS)
    cached(kv, "a", toks(1, 2, extra=1))
    alloc = kv.allocate("b", toks(1, 2, extra=1), extra_tokens=6)
    assert alloc is not None
    assert alloc.num_cached_tokens == 2 * BS
    # 9 prompt tokens + 6 output = 15 tokens = 4 blocks, 2 of them hits.
    assert len(alloc.blocks) == 4
    assert kv.usage() == pytest.approx(4 / 16)


def test_allocate_returns_none_when_full_and_changes_nothing():
    kv = KVCache(num_blocks=4, block_size=BS)
    assert kv.allocate("a", toks(1, 2, 3)) is not None
    before = (kv.usage(), kv.num_free_blocks, kv.stats.queries)
    assert kv.allocate("b", toks(5, 6)) is None
    assert (kv.usage(), kv.num_free_blocks, kv.stats.queries) == before
    kv.free("a")
    assert kv.allocate("b", toks(5, 6)) is not None


def test_lru_eviction_takes_least_recently_freed_and_never_pinned_blocks():
    kv = KVCache(num_blocks=6, block_size=BS)
    cached(kv, "old", toks(1, 2, extra=1))  # 3 blocks, 2 cached
    cached(kv, "new", toks(3, 4, extra=1))  # 3 blocks, 2 cached; all 6 blocks are now free
    pinned = kv.allocate("pin", toks(3, 4, extra=1))  # re-pins the 2 cached blocks of "new", takes 1 more
    assert pinned is not None and pinned.num_cached_tokens == 2 * BS
    # 3 blocks left free: "old"'s 3 (least recently freed). Taking 2 of them evicts "old"'s chain from its tail.
    assert kv.allocate("x", toks(7, extra=3)) is not None
    assert kv.match(toks(1, 2, extra=1)) < 2 * BS
    assert kv.match(toks(3, 4, extra=1)) == 2 * BS  # pinned: never evicted
    assert kv.allocate("y", toks(8, 9, 10)) is None  # only 1 free block left; pinned ones are not evictable


def test_tail_of_a_chain_is_evicted_before_its_head():
    kv = KVCache(num_blocks=4, block_size=BS)
    cached(kv, "a", toks(1, 2, 3, extra=1))  # 4 blocks, 3 cached, freed tail first
    assert kv.allocate("b", toks(9, extra=1)) is not None  # needs 2 blocks: the uncached one and block "3"
    assert kv.match(toks(1, 2, 3, extra=1)) == 2 * BS


def test_usage_counts_only_pinned_blocks():
    kv = KVCache(num_blocks=10, block_size=BS)
    assert kv.usage() == 0
    kv.allocate("a", toks(1, 2))
    assert kv.usage() == pytest.approx(0.2)
    kv.commit("a", 2 * BS)
    kv.free("a")
    assert kv.usage() == 0
    assert kv.num_cached_blocks == 2  # cached blocks are free, not used


def test_shared_blocks_are_ref_counted():
    kv = KVCache(num_blocks=10, block_size=BS)
    cached(kv, "seed", toks(1, 2, extra=1))
    kv.allocate("a", toks(1, 2, extra=1))
    kv.allocate("b", toks(1, 2, extra=2))
    assert kv.usage() == pytest.approx(4 / 10)  # 2 shared + 1 own each
    kv.free("a")
    assert kv.usage() == pytest.approx(3 / 10)
    kv.free("b")
    assert kv.usage() == 0


def test_counters_are_in_tokens():
    kv = KVCache(num_blocks=32, block_size=BS)
    cached(kv, "a", toks(1, 2, 3, extra=1))
    cached(kv, "b", toks(1, 2, 7, extra=1))
    assert kv.stats.queries == 26
    assert kv.stats.hits == 2 * BS
    assert kv.stats.requests == 2


def test_duplicate_block_stays_uncached_and_first_copy_wins():
    kv = KVCache(num_blocks=16, block_size=BS)
    kv.allocate("a", toks(1, 2, extra=1))
    kv.allocate("b", toks(1, 2, extra=1))  # admitted before "a" computed anything: no hit
    kv.commit("a", 9)
    kv.commit("b", 9)
    kv.free("a")
    kv.free("b")
    assert kv.num_cached_blocks == 2
    assert kv.match(toks(1, 2, extra=1)) == 2 * BS


def test_reset_drops_all_cached_blocks():
    kv = KVCache(num_blocks=16, block_size=BS)
    cached(kv, "a", toks(1, 2, extra=1))
    assert kv.reset() == 2
    assert kv.match(toks(1, 2, extra=1)) == 0
    assert kv.num_free_blocks == 16


def test_double_allocate_is_an_error_and_free_is_idempotent():
    kv = KVCache(num_blocks=16, block_size=BS)
    kv.allocate("a", toks(1))
    with pytest.raises(ValueError):
        kv.allocate("a", toks(1))
    kv.free("a")
    kv.free("a")
    assert kv.usage() == 0
