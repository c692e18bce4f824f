"""KV-cache events over ZMQ as vLLM publishes them (vllm/distributed/kv_events.py), read by a real SUB socket."""

import contextlib
import hashlib
import itertools
import random
import socket
import time
from typing import Any

import cbor2
import httpx
import msgspec
import pytest
import zmq

from benchmarks.simulator.app import create_app
from benchmarks.simulator.block_hash import Sha256CborHasher, external_hash, make_hasher
from benchmarks.simulator.config import SimConfig
from benchmarks.simulator.kv_events import END_SEQ, KVEventsConfig, encode_batch, parse_kv_events_config, wire_events
from benchmarks.simulator.kvcache import AllBlocksClearedEvent, BlockRemovedEvent, BlockStoredEvent
from benchmarks.simulator.profile import load_profile


# vLLM's declarations before PR #42892 (array_like=True), copied field for field from
# vllm/distributed/kv_events.py, to check the simulator's bytes against.
class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int | bytes]
    medium: str | None
    group_idx: int | None = None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


DECODER = msgspec.msgpack.Decoder(KVEventBatch)


def test_sha256_cbor_matches_vllms_hash_block_tokens():
    # vllm/v1/core/kv_cache_utils.py: hash_block_tokens = hash_fn((parent or NONE_HASH, tuple(tokens), extra_keys)),
    # init_none_hash: NONE_HASH = hash_fn(PYTHONHASHSEED); vllm/utils/hashing.py: sha256_cbor =
    # sha256(cbor2.dumps(obj, canonical=True)). Recomputed here independently.
    def sha256_cbor(obj):
        return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()

    tokens = list(range(100, 140))
    parent = sha256_cbor("0")
    expect = []
    for b in range(2):
        parent = sha256_cbor((parent, tuple(tokens[b * 16 : (b + 1) * 16]), None))
        expect.append(parent)
    assert Sha256CborHasher("0")(tokens, 16) == expect
    assert make_hasher("sha256_cbor", seed="0")(tokens, 16) == expect
    # vllm maybe_convert_block_hash with VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1: low 64 bits, big-endian.
    assert external_hash(expect[0]) == int.from_bytes(expect[0], "big") & (2**64 - 1)
    assert external_hash(expect[0], as_int=False) == expect[0]


def test_encoded_bytes_equal_vllms_structs():
    h1, h2 = b"\x01" * 16, b"\x02" * 16
    events = [BlockStoredEvent((h1, h2), None, tuple(range(32))), BlockRemovedEvent((h1,)), AllBlocksClearedEvent()]
    ours = encode_batch(12.5, wire_events(events, 16))
    i1, i2 = external_hash(h1), external_hash(h2)
    theirs = msgspec.msgpack.encode(
        KVEventBatch(
            ts=12.5,
            events=[
                BlockStored([i1, i2], None, list(range(32)), 16, None, "GPU", None, [None, None], 0, "full_attention"),
                BlockRemoved([i1], "GPU", 0),
                AllBlocksCleared(),
            ],
            data_parallel_rank=0,
        )
    )
    assert ours == theirs
    assert msgspec.msgpack.decode(ours)[1][0][0] == "BlockStored"  # tagged arrays, tag first
    as_map = msgspec.msgpack.decode(encode_batch(1.0, wire_events(events, 16, encoding="map"), encoding="map"))
    assert as_map["events"][1] == {"type": "BlockRemoved", "block_hashes": [i1], "medium": "GPU", "group_idx": 0}


def test_config_parsing_follows_vllm():
    # vllm/config/kv_events.py: publisher defaults to "zmq" when events are enabled; unknown keys rejected.
    cfg = parse_kv_events_config('{"enable_kv_cache_events": true, "topic": "kv"}')
    assert cfg.active and cfg.endpoint == "tcp://*:5557" and cfg.buffer_steps == 10_000
    assert not parse_kv_events_config('{"enable_kv_cache_events": false}').active
    with pytest.raises(ValueError, match="unknown keys"):
        parse_kv_events_config('{"enable_kv_cache_events": true, "bogus": 1}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Subscriber:
    def __init__(self, port: int, topic: str) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.sub.connect(f"tcp://127.0.0.1:{port}")
        self.topic = topic.encode()
        self.batches: list[tuple[int, KVEventBatch]] = []

    def drain(self, timeout: float = 1.0, until: int | None = None) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sub.poll(50):
                topic, seq, payload = self.sub.recv_multipart()
                assert topic == self.topic
                self.batches.append((int.from_bytes(seq, "big"), DECODER.decode(payload)))
            elif until is not None and len(self.events()) >= until:
                break
        return self.events()

    def events(self) -> list[Any]:
        return [e for _, b in self.batches for e in b.events]

    def close(self) -> None:
        self.sub.close(linger=0)
        self.ctx.term()


@contextlib.asynccontextmanager
async def sim_with_events(**profile):
    port, replay = free_port(), free_port()
    events = KVEventsConfig(
        enable_kv_cache_events=True,
        publisher="zmq",
        endpoint=f"tcp://*:{port}",
        topic="kv-events",
        replay_endpoint=f"tcp://*:{replay}",
    )
    cfg = SimConfig(
        profile=load_profile(**profile),
        time_scale=0.0,
        kv_events=events,
        prefix_caching_hash_algo="sha256_cbor",
        hash_seed="0",
    )
    app = create_app(cfg, rng=random.Random(0))
    async with app.router.lifespan_context(app):
        sub = Subscriber(port, "kv-events")
        time.sleep(0.2)  # ZMQ slow joiner: let the subscription reach the publisher
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://sim") as c:
                yield c, app.state.sim, sub, replay
        finally:
            sub.close()


async def test_stored_events_on_a_request_then_cleared_on_reset():
    async with sim_with_events() as (c, _, sub, _):
        ids = list(range(1000, 1100))  # 100 prompt tokens: 6 full blocks
        r = await c.post("/v1/completions", json={"prompt": ids, "max_tokens": 40})
        assert r.status_code == 200
        events = sub.drain(until=1)
        stored = [e for e in events if isinstance(e, BlockStored)]
        assert stored and not [e for e in events if isinstance(e, BlockRemoved)]
        hashes = [h for e in stored for h in e.block_hashes]
        # prompt + generated tokens whose KV was computed (100 + 39 = 139 tokens): 8 full blocks, in order
        expect = [external_hash(h) for h in Sha256CborHasher("0")(ids + out_ids(r), 16)][:8]
        assert hashes == expect
        assert stored[0].parent_block_hash is None and stored[0].token_ids[:16] == ids[:16]
        for prev, e in itertools.pairwise(stored):
            assert e.parent_block_hash == prev.block_hashes[-1]
        assert all(e.block_size == 16 and e.medium == "GPU" and e.lora_id is None for e in stored)
        assert all(len(e.token_ids) == 16 * len(e.block_hashes) for e in stored)

        r = await c.post("/reset_prefix_cache")
        assert r.status_code == 200
        sub.drain(until=len(events) + 1)
        assert isinstance(sub.events()[-1], AllBlocksCleared)
        seqs = [s for s, _ in sub.batches]
        assert seqs == list(range(len(seqs)))  # contiguous from 0
        assert all(b.data_parallel_rank == 0 for _, b in sub.batches)


def out_ids(response: httpx.Response) -> list[int]:
    from benchmarks.simulator.tokenizer import encode

    return encode(response.json()["choices"][0]["text"])


async def test_removed_only_when_a_cached_block_is_evicted():
    # 12 blocks. A's 6 full prompt blocks stay cached (free) after A finishes: no BlockRemoved then.
    # B needs 10 blocks, so it reuses A's freed blocks: BlockRemoved for A's hashes (vLLM's
    # BlockPool._maybe_evict_cached_block), never BlockRemoved for a merely freed block.
    async with sim_with_events(num_gpu_blocks=12, max_model_len=192) as (c, _, sub, _):
        a = list(range(1000, 1100))
        await c.post("/v1/completions", json={"prompt": a, "max_tokens": 1})
        first = sub.drain(until=1)
        a_hashes = [h for e in first if isinstance(e, BlockStored) for h in e.block_hashes]
        assert len(a_hashes) == 6 and not [e for e in first if isinstance(e, BlockRemoved)]
        await c.post("/v1/completions", json={"prompt": list(range(5000, 5150)), "max_tokens": 1})
        events = sub.drain(until=len(first) + 2)
        removed = [h for e in events if isinstance(e, BlockRemoved) for h in e.block_hashes]
        assert removed and set(removed) <= set(a_hashes)
        assert all(len(e.block_hashes) == 1 and e.medium == "GPU" for e in events if isinstance(e, BlockRemoved))


async def test_replay_from_a_sequence_number():
    # ZmqEventPublisher._service_replay: a request carrying an 8-byte big-endian start sequence gets every
    # buffered (seq, payload) from it on, then (-1, b"").
    async with sim_with_events() as (c, _, sub, replay_port):
        for i in range(3):
            await c.post("/v1/completions", json={"prompt": list(range(i * 100, i * 100 + 40)), "max_tokens": 1})
        sub.drain(until=3)
        live = {s: b for s, b in sub.batches}
        assert len(live) >= 3
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)  # a REQ socket would keep only the first of the replies
        dealer.connect(f"tcp://127.0.0.1:{replay_port}")
        got = []
        try:
            dealer.send_multipart([b"", (1).to_bytes(8, "big")])  # what a REQ socket sends
            while True:
                assert dealer.poll(2000), "no replay answer"
                empty, seq, payload = dealer.recv_multipart()
                assert empty == b""
                if seq == END_SEQ:
                    assert payload == b""
                    break
                got.append((int.from_bytes(seq, "big"), DECODER.decode(payload)))
        finally:
            dealer.close(linger=0)
            ctx.term()
        assert [s for s, _ in got] == sorted(s for s in live if s >= 1)
        assert all(b == live[s] for s, b in got)
