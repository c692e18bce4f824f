"""The precise cache view's pure parts: vLLM's block hashes, the prompt chunk cache, the bounded block index,
the KV-event decoder (both wire shapes, garbage) and the --kv-events spec."""

from __future__ import annotations

import hashlib
import random
import tracemalloc
from typing import Any

import cbor2
import msgspec
import pytest

from extproc.config import Settings, parse_backends, settings_from_args
from extproc.datastore.kv_block_index import BYTES_PER_BLOCK, KVBlockIndex
from extproc.datastore.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventDecodeError,
    KVEventSource,
    decode_batch,
    parse_kv_events_spec,
)
from extproc.datastore.precise_cache import build_precise_view
from extproc.tokenization import ApproxTokenizer, approx
from extproc.tokenization.block_hash import BlockHasher, external_hash, none_hash, sha256_cbor
from extproc.tokenization.prompt_blocks import PromptHasher


# --- hashing ---------------------------------------------------------------------------------------------------
def vllm_reference(tokens: list[int], seed: str, block_size: int = 16) -> list[int]:
    """vllm/v1/core/kv_cache_utils.py as documented: NONE_HASH = sha256_cbor(PYTHONHASHSEED);
    hash_block_tokens = sha256_cbor((parent or NONE_HASH, tuple(block), None)); maybe_convert_block_hash =
    int.from_bytes(digest, "big") & (2**64 - 1). cbor2 canonical, as vllm/utils/hashing.py."""

    def h(obj: Any) -> bytes:
        return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()

    parent, out = h(seed), []
    for b in range(len(tokens) // block_size):
        parent = h((parent, tuple(tokens[b * block_size : (b + 1) * block_size]), None))
        out.append(int.from_bytes(parent, "big") & (2**64 - 1))
    return out


def handwritten_cbor_uint(value: int) -> bytes:
    # RFC 8949 major type 0, shortest form (canonical).
    for limit, head, size in ((24, None, 0), (1 << 8, 24, 1), (1 << 16, 25, 2), (1 << 32, 26, 4), (1 << 64, 27, 8)):
        if value < limit:
            return bytes([value]) if head is None else bytes([head]) + value.to_bytes(size, "big")
    raise AssertionError


@pytest.mark.parametrize("block_size", [16, 4, 32])
@pytest.mark.parametrize("seed", ["0", "42", "a seed"])
def test_block_hashes_equal_vllms_algorithm(seed: str, block_size: int) -> None:
    rng = random.Random(block_size)
    # ids in every CBOR width: < 24, 1, 2, 4 and 8 bytes
    tokens = [rng.choice([5, 200, 60_000, 3_000_000_000, 2**40]) + rng.randint(0, 3) for _ in range(5 * block_size + 3)]
    expect = vllm_reference(tokens, seed, block_size)
    hasher = BlockHasher(seed, block_size=block_size)
    assert len(expect) == 5
    assert hasher.hashes(tokens) == expect
    assert hasher.hashes(tokens) == expect  # from the cache
    assert hasher.cache_hits == 5
    assert [external_hash(d) for d in BlockHasher(seed, block_size=block_size, cache_blocks=0).chain(tokens)] == expect
    # the hand-written CBOR of chain() against an independent encoding of the same value
    block = tokens[:block_size]
    encoded = (b"\x83\x58\x20" + none_hash(seed) + bytes([0x80 | block_size] if block_size < 24 else [0x98, block_size])
               + b"".join(handwritten_cbor_uint(t) for t in block) + b"\xf6")
    assert encoded == cbor2.dumps((none_hash(seed), tuple(block), None), canonical=True)


def test_none_hash_and_external_hash() -> None:
    assert none_hash("0") == sha256_cbor("0") == hashlib.sha256(cbor2.dumps("0")).digest()
    digest = bytes(range(32))
    assert external_hash(digest) == int.from_bytes(digest, "big") & (2**64 - 1) == external_hash(external_hash(digest))


PARAGRAPH = "The agent plans step {i}: read the file, call the tool, check the result.\n\n"


async def test_prompt_hasher_equals_whole_tokenization_and_reuses_chunks() -> None:
    tokenizer = ApproxTokenizer()
    hasher = BlockHasher("0")
    prompts = PromptHasher(tokenizer, hasher, chunk_chars=128, verify_every=1)
    text = ""
    for i in range(40):
        text += PARAGRAPH.format(i=i) + ("  x" if i % 7 == 0 else "")
        got = await prompts.blocks(text)
        ids = approx.encode(text)
        assert got is not None and got.tokens == len(ids)
        assert list(got.hashes) == vllm_reference(ids, "0")
    assert prompts.chunk_hits > prompts.chunk_misses and prompts.verify_mismatches == 0
    messages = [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
    chat = await prompts.blocks("", messages)
    ids = approx.encode(approx.apply_chat_template(messages))
    assert chat is not None and list(chat.hashes) == vllm_reference(ids, "0")
    assert await prompts.blocks("", [{"content": "no role"}]) is None and prompts.errors == 1


async def test_prompt_hasher_turns_chunking_off_when_a_tokenizer_does_not_split_there() -> None:
    class Merging(ApproxTokenizer):  # pretends to be approx but tokenizes the whole text differently
        pass

    tokenizer = Merging()
    real = tokenizer.text.encode
    tokenizer.text.encode = lambda text, *, add_special_tokens: real(text.replace(" ", ""), add_special_tokens=True)  # type: ignore[method-assign]
    prompts = PromptHasher(tokenizer, BlockHasher("0"), chunk_chars=16, verify_every=1)
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho"
    got = await prompts.blocks(text)
    assert prompts.verify_mismatches == 1 and prompts.cut is None
    assert got is not None and got.tokens == len(approx.encode(text.replace(" ", "")))


# --- the index ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("held", "prompt", "expect"),
    [
        ({"a": [1, 2, 3], "b": [1, 2]}, [1, 2, 3, 4], {"a": 3, "b": 2, "c": 0}),
        ({"a": [2, 3], "b": []}, [1, 2, 3], {"a": 0, "b": 0, "c": 0}),  # a hole at the start: nothing leads
        ({"a": [1, 3], "c": [1, 2, 3]}, [1, 2, 3], {"a": 1, "b": 0, "c": 3}),
        ({"a": [1, 2], "b": [1, 2], "c": [1, 2]}, [1, 2], {"a": 2, "b": 2, "c": 2}),
        ({"a": [1]}, [], {"a": 0, "b": 0, "c": 0}),
    ],
)
def test_match_counts_leading_blocks(held: dict[str, list[int]], prompt: list[int], expect: dict[str, int]) -> None:
    index = KVBlockIndex(["a", "b", "c"])
    for instance, hashes in held.items():
        index.store(instance, hashes)
    assert index.match(prompt) == expect
    assert index.match(prompt, ["b", "zzz"]) == {"b": expect["b"]}


def test_remove_clear_sweep_and_bit_reuse() -> None:
    index = KVBlockIndex(["a", "b"])
    index.store("a", range(100))
    index.store("b", range(50))
    index.remove("a", [0, 1000])
    assert index.blocks("a") == 99 and index.match(list(range(10))) == {"a": 0, "b": 10}
    index.clear("a")
    assert index.blocks("a") == 0 and index.total == 50
    assert index.match(list(range(10))) == {"a": 0, "b": 10}
    index.store("a", [7])
    assert ("a", 7) in index and ("a", 8) not in index
    assert index.sweep(budget=10) > 0
    assert index.sweep() == 0
    index.clear("b")
    index.sweep()
    assert index.match(list(range(10))) == {"a": 0, "b": 0} and index.total == 1
    assert set(index._masks) == {7}  # everything else swept


def test_global_bound_drops_the_oldest_blocks_of_the_largest_instance() -> None:
    index = KVBlockIndex(["a", "b"], max_blocks=10)
    index.store("a", range(8))
    index.store("b", range(100, 104))  # 12 > 10: a (the largest) loses 0 and 1
    assert index.total == 10 and index.evicted == {"a": 2, "b": 0}
    assert index.match([0, 1, 2]) == {"a": 0, "b": 0} and index.match([2, 3]) == {"a": 2, "b": 0}
    index.store("a", [2])  # already held: nothing changes
    index.store("b", range(104, 110))  # b grows to 10 -> drop from whichever is larger each time
    assert index.total == 10 and index.blocks("a") + index.blocks("b") == 10


def test_order_is_compacted_after_churn() -> None:
    index = KVBlockIndex(["a"])
    for round_ in range(30):
        hashes = range(round_ * 1000, round_ * 1000 + 1000)
        index.store("a", hashes)
        index.remove("a", hashes)
    assert index.total == 0 and len(index._order["a"]) <= 2048


def test_bytes_per_block_is_as_documented() -> None:
    rng = random.Random(0)
    index = KVBlockIndex(["a"], max_blocks=10**7)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200_000 // 16):
            index.store("a", [rng.getrandbits(64) for _ in range(16)])
        per_block = (tracemalloc.get_traced_memory()[0] - before) / 200_000
    finally:
        tracemalloc.stop()
    assert 0.7 * BYTES_PER_BLOCK < per_block < 1.3 * BYTES_PER_BLOCK, per_block


# --- the decoder -------------------------------------------------------------------------------------------------
# vLLM's declarations in both shapes (vllm/distributed/kv_events.py before and after PR #42892).
class _ArrayBase(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class _MapBase(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


def _vllm_structs(base: type, array_like: bool) -> tuple[Any, Any, Any, Any]:
    stored = msgspec.defstruct("BlockStored", [
        ("block_hashes", list[int | bytes]), ("parent_block_hash", int | bytes | None), ("token_ids", list[int]),
        ("block_size", int), ("lora_id", int | None), ("medium", str | None), ("lora_name", str | None),
        ("extra_keys", list[Any] | None, None), ("group_idx", int | None, None),
        ("kv_cache_spec_kind", str | None, None), ("kv_cache_spec_sliding_window", int | None, None)], bases=(base,))
    removed = msgspec.defstruct("BlockRemoved", [("block_hashes", list[int | bytes]), ("medium", str | None),
                                                 ("group_idx", int | None, None)], bases=(base,))
    cleared = msgspec.defstruct("AllBlocksCleared", [], bases=(base,))
    batch = msgspec.defstruct("KVEventBatch", [("ts", float), ("events", list[Any]),
                                               ("data_parallel_rank", int | None, None)],
                              array_like=array_like, omit_defaults=True)
    return batch, stored, removed, cleared


@pytest.mark.parametrize("shape", ["array", "map"])
def test_decodes_both_vllm_shapes(shape: str) -> None:
    batch, stored, removed, cleared = _vllm_structs(_ArrayBase if shape == "array" else _MapBase, shape == "array")
    digest = bytes(range(32))
    payload = msgspec.msgpack.encode(batch(ts=1.5, events=[
        stored([1, 2**64 - 1, digest], None, list(range(48)), 16, None, "GPU", None, [None] * 3, 0, "full_attention"),
        stored([9], 1, list(range(16)), 16, None, "CPU", None),
        removed([2], "GPU", 0),
        cleared(),
    ], data_parallel_rank=0))
    assert payload[0] >> 4 == (0x9 if shape == "array" else 0x8)
    got = decode_batch(payload)
    assert got.ts == 1.5 and got.skipped == 0
    assert got.events == (BlockStored((1, 2**64 - 1, external_hash(digest)), "GPU"), BlockStored((9,), "CPU"),
                          BlockRemoved((2,), "GPU"), AllBlocksCleared())


@pytest.mark.parametrize("shape", ["array", "map"])
def test_unknown_events_are_skipped_and_garbage_raises(shape: str) -> None:
    if shape == "array":
        raw = [2.0, [["BlockStored", [5], None, [], 16, None, "GPU"], ["SomethingNew", 1], ["BlockRemoved", [5]]], 0]
    else:
        raw = {"ts": 2.0, "events": [{"type": "BlockStored", "block_hashes": [5]}, {"type": "SomethingNew"},
                                     {"type": "BlockRemoved", "block_hashes": ["not a hash"]}]}
    got = decode_batch(msgspec.msgpack.encode(raw))
    assert got.events[0] == BlockStored((5,), "GPU" if shape == "array" else None)
    assert got.skipped == (1 if shape == "array" else 2)
    for garbage in (b"", b"\xc1", b"hello", msgspec.msgpack.encode([1, 2]), msgspec.msgpack.encode({"ts": "x"}),
                    msgspec.msgpack.encode("str")):
        with pytest.raises(KVEventDecodeError):
            decode_batch(garbage)


# --- configuration -----------------------------------------------------------------------------------------------
def test_kv_events_spec() -> None:
    assert parse_kv_events_spec("a=tcp://h:1;replay=tcp://h:2;topic=kv, b=tcp://h:3") == {
        "a": KVEventSource("a", "tcp://h:1", "tcp://h:2", "kv"),
        "b": KVEventSource("b", "tcp://h:3"),
    }
    for bad in ("a", "a=h:1", "a=tcp://h:1;bogus=1", "a=tcp://h:1;replay=h", "a=tcp://h:1,a=tcp://h:2"):
        with pytest.raises(ValueError):
            parse_kv_events_spec(bad)


def test_settings_and_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_precise_view(Settings(), ["vllm-1"]) is None
    monkeypatch.setenv("EXTPROC_KV_HASH_SEED", "0")
    settings = settings_from_args(["--backends", "a,b", "--kv-events", "a=tcp://127.0.0.1:5557",
                                   "--kv-block-size", "32", "--kv-index-max-blocks", "1000"])
    assert settings.kv_hash_seed == "0" and settings.kv_block_size == 32 and settings.kv_hash_algo == "sha256_cbor"
    view = build_precise_view(settings, ["a", "b"])
    assert view is not None and view.block_size == 32 and view.index.max_blocks == 1000
    with pytest.raises(ValueError, match="not backends"):
        Settings(backends=parse_backends("a"), kv_events="z=tcp://h:1", kv_hash_seed="0").validate()
    with pytest.raises(ValueError, match="kv-hash-seed"):
        Settings(backends=parse_backends("a"), kv_events="a=tcp://h:1").validate()
