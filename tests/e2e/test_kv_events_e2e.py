"""The precise cache view against a real simulated vLLM process over real ZMQ: the block hashes the product
computes equal those the server publishes; stored, evicted and cleared blocks; a gap filled by replay or
counted as a resync."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import zmq

from extproc.datastore.kv_events import BlockStored, KVEventSource, decode_batch
from extproc.datastore.precise_cache import PreciseCacheView
from extproc.tokenization import ApproxTokenizer
from extproc.tokenization.block_hash import BlockHasher

pytestmark = pytest.mark.e2e

SEED = "1234"
WORDS = ["plan", "read", "call", "check", "write", "test", "deploy", "review", "merge", "ship"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prompt(tag: str, words: int) -> str:
    return f"{tag}: " + " ".join(f"{WORDS[i % len(WORDS)]}{i}" for i in range(words))


class Sim:
    def __init__(self, *extra: str) -> None:
        self.pub, self.replay = free_port(), free_port()
        config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{self.pub}",
                  "replay_endpoint": f"tcp://*:{self.replay}", "topic": "kv"}
        argv = [sys.executable, "-m", "benchmarks.simulator", "--port", "0", "--time-scale", "0", "--name", "sim",
                "--prefix-caching-hash-algo", "sha256_cbor", "--kv-events-config", json.dumps(config), *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": SEED}
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        assert self.proc.stdout is not None
        buffer, deadline = b"", time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.1)[0]:
                buffer += os.read(self.proc.stdout.fileno(), 4096)
                match = re.search(rb"VLLM_SIM_LISTENING port=(\d+)\n", buffer)
                if match:
                    self.url = f"http://127.0.0.1:{int(match.group(1))}"
                    return
        self.proc.kill()
        raise AssertionError(f"simulator did not start: {buffer!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def source(self, replay: bool = True) -> dict[str, KVEventSource]:
        return {"sim": KVEventSource("sim", f"tcp://127.0.0.1:{self.pub}",
                                     f"tcp://127.0.0.1:{self.replay}" if replay else None, "kv")}


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def make_view(sim: Sim, replay: bool = True) -> PreciseCacheView:
    return PreciseCacheView(sim.source(replay), ApproxTokenizer(), BlockHasher(SEED), max_blocks=100_000,
                            replay_timeout_s=2.0)


@pytest.fixture
async def small_sim() -> AsyncIterator[Sim]:
    sim = Sim("--num-gpu-blocks", "40", "--max-model-len", "512")
    try:
        yield sim
    finally:
        sim.stop()


async def complete(client: httpx.AsyncClient, text: str) -> None:
    r = await client.post("/v1/completions", json={"model": "m", "prompt": text, "max_tokens": 1})
    assert r.status_code == 200, r.text


async def test_view_follows_stored_evicted_cleared_and_gaps(small_sim: Sim) -> None:
    sim = small_sim
    ctx = zmq.Context()
    raw = ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.SUBSCRIBE, b"kv")
    raw.connect(f"tcp://127.0.0.1:{sim.pub}")
    view, no_replay = make_view(sim), make_view(sim, replay=False)
    await view.start()
    await no_replay.start()
    try:
        async def live() -> bool:
            return view.consumer.live("sim") and no_replay.consumer.live("sim")

        await until(live)
        await asyncio.sleep(0.3)  # ZMQ slow joiner: subscriptions reach the publisher
        async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
            # 1. the hashes the product computes are the ones the server publishes
            first = prompt("first", 60)
            await complete(client, first)
            blocks = await view.prompt_blocks(first, None)
            assert blocks is not None and len(blocks.hashes) >= 4
            published: list[int] = []
            deadline = time.monotonic() + 10
            while len(published) < len(blocks.hashes) and time.monotonic() < deadline:
                if raw.poll(100):
                    _topic, _, payload = raw.recv_multipart()
                    published += [h for e in decode_batch(payload).events if isinstance(e, BlockStored)
                                  for h in e.hashes]
            assert published[: len(blocks.hashes)] == list(blocks.hashes)

            # 2. the view reports the instance holds them
            async def holds_first() -> bool:
                answer = await view.cached_tokens(first, None)
                return answer is not None and answer[1]["sim"] == len(blocks.hashes) * 16

            await until(holds_first)
            fractions = await view.cached_fractions(first, None)
            assert fractions is not None and fractions["sim"] > 0.9

            # 3. eviction: other prompts take the 40 blocks -> BlockRemoved -> the view drops them
            for i in range(6):
                await complete(client, prompt(f"other{i}", 60))

            async def first_evicted() -> bool:
                answer = await view.cached_tokens(first, None)
                return answer is not None and answer[1]["sim"] == 0

            await until(first_evicted)
            assert view.consumer.stats["sim"].removed > 0

            # 4. /reset_prefix_cache -> AllBlocksCleared -> nothing held
            r = await client.post("/reset_prefix_cache")
            assert r.status_code == 200

            async def cleared() -> bool:
                view.index.sweep()
                return view.index.blocks("sim") == 0 and view.consumer.stats["sim"].cleared >= 1

            await until(cleared)

            # 5. a gap: both consumers miss a batch while unsubscribed; the one with a replay endpoint fills
            # it, the other clears its view and counts a resync.
            await view.consumer.stop()
            await no_replay.consumer.stop()
            missed = prompt("missed", 40)
            await complete(client, missed)
            await asyncio.sleep(0.3)
            await view.start()
            await no_replay.start()
            await until(live)
            await asyncio.sleep(0.3)
            after = prompt("after", 40)
            await complete(client, after)

            async def resynced() -> bool:
                return (view.consumer.stats["sim"].replays >= 1
                        and no_replay.consumer.stats["sim"].resyncs >= 1)

            await until(resynced)
            for v, expect_missed in ((view, True), (no_replay, False)):
                answer = await v.cached_tokens(missed, None)
                assert answer is not None and (answer[1]["sim"] > 0) is expect_missed
                answer = await v.cached_tokens(after, None)
                assert answer is not None and answer[1]["sim"] > 0
            assert view.consumer.stats["sim"].gaps == 1 and view.consumer.stats["sim"].resyncs == 0

        # 6. the instance goes down (Endpoints.on_down) -> its view is gone
        view.forget("sim")
        view.index.sweep()
        assert view.index.blocks("sim") == 0
        text = "\n".join(line for line in _scrape(view) if "extproc_kv_events" in line)
        assert 'extproc_kv_events_gaps_total{instance="sim"} 1.0' in text
        assert 'extproc_kv_events_resyncs_total{instance="sim"} 0.0' in text
    finally:
        await view.stop()
        await no_replay.stop()
        raw.close(linger=0)
        ctx.term()


def _scrape(view: PreciseCacheView) -> list[str]:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(view.collector())
    return generate_latest(registry).decode().splitlines()


async def test_map_encoding_and_no_stream_means_no_answer() -> None:
    sim = Sim("--kv-events-encoding", "map")
    view = make_view(sim)
    try:
        # before the consumer runs, the instance has no live stream: no answer, the caller falls back
        assert await view.cached_fractions(prompt("x", 40), None) is None
        answer = await view.cached_tokens(prompt("x", 40), None)
        assert answer is not None and answer[1] == {"sim": None}
        await view.start()
        await until(lambda: _true(view.consumer.live("sim")))
        await asyncio.sleep(0.3)
        text = prompt("map", 50)
        async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
            await complete(client, text)

        async def held() -> bool:
            fractions = await view.cached_fractions(text, None)
            return fractions is not None and fractions["sim"] > 0.8

        await until(held)
        assert view.consumer.stats["sim"].decode_errors == 0
    finally:
        await view.stop()
        sim.stop()


async def _true(value: bool) -> bool:
    return value
