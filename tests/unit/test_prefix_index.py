from hypothesis import given
from hypothesis import strategies as st

from extproc.routing.prefix import DEFAULT_BLOCK_BYTES, PrefixIndex, block_hashes

SHARED = "You are a helpful analyst. " * 20  # 540 bytes: 8 full blocks


def test_blocks_chain_and_ignore_the_partial_tail() -> None:
    a = block_hashes(SHARED + "question one" * 10)
    b = block_hashes(SHARED + "question two" * 10)
    shared_blocks = len(SHARED) // DEFAULT_BLOCK_BYTES
    assert a[:shared_blocks] == b[:shared_blocks]
    assert a[shared_blocks + 1] != b[shared_blocks + 1]
    assert len(block_hashes("x" * (DEFAULT_BLOCK_BYTES * 3 - 1))) == 2
    assert block_hashes("") == []


def test_a_divergent_block_breaks_the_chain() -> None:
    base = block_hashes("A" * 64 + "B" * 64 + "C" * 64)
    changed = block_hashes("A" * 64 + "X" * 64 + "C" * 64)
    assert base[0] == changed[0] and base[1] != changed[1] and base[2] != changed[2]


def test_match_counts_leading_blocks_per_instance() -> None:
    index = PrefixIndex(["a", "b"], capacity_blocks=1000)
    first = block_hashes(SHARED + "tail one " * 30)
    index.learn("a", first)
    second = block_hashes(SHARED + "tail two " * 30)
    matches = index.match(second)
    assert matches["b"] == 0
    assert matches["a"] == len(SHARED) // DEFAULT_BLOCK_BYTES
    assert index.match(first)["a"] == len(first)


def test_lru_bound_evicts_least_recently_used_blocks() -> None:
    index = PrefixIndex(["a"], capacity_blocks=10)
    old = block_hashes("old " * 160)  # 10 blocks
    index.learn("a", old)
    new = block_hashes("new " * 80)  # 5 blocks
    index.learn("a", new)
    assert index.size("a") == 10
    assert index.match(new)["a"] == 5
    assert index.match(old)["a"] == 5  # the old prompt's 5 tail blocks went first; its prefix still matches


def test_forget_clears_an_instance() -> None:
    index = PrefixIndex(["a", "b"])
    hashes = block_hashes(SHARED)
    index.learn("a", hashes)
    index.learn("b", hashes)
    index.forget("a")
    assert index.match(hashes) == {"a": 0, "b": len(hashes)}
    assert index.entries() == len(hashes) and index.approx_bytes() > 0


@given(st.lists(st.text(min_size=0, max_size=400), min_size=1, max_size=30), st.integers(1, 50))
def test_memory_bound_and_match_never_exceeds_the_prompt(prompts: list[str], capacity: int) -> None:
    index = PrefixIndex(["a", "b"], capacity_blocks=capacity)
    for i, prompt in enumerate(prompts):
        hashes = block_hashes(prompt)
        matches = index.match(hashes)
        assert all(0 <= m <= len(hashes) for m in matches.values())
        index.learn("a" if i % 2 else "b", hashes)
        assert index.size("a") <= capacity and index.size("b") <= capacity
        assert index.match(hashes)["a" if i % 2 else "b"] == min(len(hashes), capacity)
