from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.datastore.prefix_index import BYTES_PER_ENTRY, DEFAULT_BLOCK_BYTES, PrefixIndex, block_hashes

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Prompts over a tiny alphabet share long prefixes often; whole blocks of one letter make sharing likelier still.
_chunks = st.sampled_from(["a" * DEFAULT_BLOCK_BYTES, "b" * DEFAULT_BLOCK_BYTES, "ab", "\u00e9", "x"])
prompts = st.lists(_chunks, max_size=12).map("".join)

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


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "forget-a"]), prompts), max_size=40), st.integers(1, 12))
def test_memory_bound_holds_through_any_learn_and_forget(steps: list[tuple[str, str]], capacity: int) -> None:
    index = PrefixIndex(["a", "b", "c"], capacity_blocks=capacity)
    for instance, prompt in steps:
        if instance == "forget-a":
            index.forget("a")
            assert index.size("a") == 0
        else:
            index.learn(instance, block_hashes(prompt))
        assert all(index.size(i) <= capacity for i in ("a", "b", "c"))
        assert index.entries() == sum(index.size(i) for i in ("a", "b", "c")) <= 3 * capacity
        assert index.approx_bytes() == index.entries() * BYTES_PER_ENTRY


@PROPERTY_SETTINGS
@given(prompts, st.integers(0, 800), st.integers(0, 800), st.text(min_size=1, max_size=80))
def test_match_length_is_monotone_in_the_shared_prefix(base: str, cut1: int, cut2: int, tail: str) -> None:
    """Two prompts that share more leading text with a learned prompt never match fewer blocks."""
    base = base + "q" * 600
    index = PrefixIndex(["a"], capacity_blocks=10_000)
    index.learn("a", block_hashes(base))
    short, long_ = sorted((cut1, cut2))
    divergent = "\x00" + tail  # a byte no generated prompt holds: the shared prefix ends exactly at the cut
    m_short = index.match(block_hashes(base[:short] + divergent))["a"]
    m_long = index.match(block_hashes(base[:long_] + divergent))["a"]
    assert m_short <= m_long
    # And the match is exactly the full blocks of the shared prefix (the chain cannot skip a block).
    assert m_long == len(base[:long_].encode()) // DEFAULT_BLOCK_BYTES


@PROPERTY_SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), prompts), min_size=1, max_size=30), st.integers(1, 20))
def test_lru_trims_chains_from_their_tail(steps: list[tuple[str, str]], capacity: int) -> None:
    """Eviction never breaks a learned chain at its start: what an instance still holds of any prompt it learned
    is a leading run of that prompt's blocks, and the latest prompt keeps min(length, capacity) of them."""
    index = PrefixIndex(["a", "b"], capacity_blocks=capacity)
    learned: dict[str, list[list[int]]] = {"a": [], "b": []}
    for instance, prompt in steps:
        hashes = block_hashes(prompt)
        index.learn(instance, hashes)
        learned[instance].append(hashes)
        assert index.match(hashes)[instance] == min(len(hashes), capacity)
        for name, chains in learned.items():
            for chain in chains:
                held = [index.match([h])[name] == 1 for h in chain]
                run = index.match(chain)[name]
                assert held == [True] * run + [False] * (len(chain) - run), (name, held)
