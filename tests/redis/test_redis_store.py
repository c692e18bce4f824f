"""The Redis store on the system Redis (a key prefix per test): limits, TTL, leases, replicas racing, statistics.

Several ``RedisStore`` objects on one prefix are several replicas (each has its own wake-up subscription,
waiters and connection pool). The differential test drives the memory store and the Redis store with the
same operations and the same clock and requires identical answers and statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter
from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from a2a_service import (
    A2AError,
    Delivery,
    MemoryStore,
    MessageTooLargeError,
    NotFoundError,
    QueueFullError,
    RecordKind,
    RedisStore,
    RequestRecord,
    SendRequest,
    Settings,
    TooManyAgentsError,
    TooManyWorkflowsError,
)
from tests.redis.conftest import redis_settings


def req(target: str = "b", payload: bytes = b"{}", wf: str = "wf", source: str = "a", ttl: float | None = None):
    return SendRequest(wf, source, target, "data", payload, ttl)


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.message.message_id for d in deliveries]


async def keys_under(url: str, prefix: str) -> set[str]:
    client = aioredis.Redis.from_url(url)
    try:
        return {k.decode()[len(prefix) :] async for k in client.scan_iter(match=prefix + "*")}
    finally:
        await client.aclose()


# ---------------------------------------------------------------------- layout and limits


async def test_keys_live_under_the_prefix_and_go_with_the_workflow(make_store, redis_url, redis_prefix):
    store = await make_store()
    await store.send(req("b", b'{"x":1}'))
    await store.send(req("*", source="b"))  # broadcast: one shared body
    await store.receive("wf", "b", max_messages=1, timeout=0, visibility_timeout=30)
    keys = await keys_under(redis_url, redis_prefix)
    assert {"workflows", "stats", "due", "w/wf", "a/wf", "b/wf", "r/wf/a", "l/wf/b", "e/wf/b", "x/wf/a"} <= keys
    assert all(not k.startswith("a2a:") for k in keys)  # nothing under the default prefix
    assert (await store.delete_workflow("wf")).dropped_messages == 2
    left = await keys_under(redis_url, redis_prefix)
    assert not {k for k in left if "/wf" in k and not k.startswith("wt/")}, left  # only the waiting marker may stay


async def test_queue_limit_is_exact_when_two_replicas_send_at_once(make_store):
    a, b = await make_store(max_message_queue_size=20), await make_store(max_message_queue_size=20)
    results = await asyncio.gather(
        *(store.send(req(payload=str(i).encode())) for i, store in zip(range(60), itertools.cycle((a, b)))),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in results) == 20
    assert all(isinstance(r, QueueFullError) for r in results if isinstance(r, Exception))
    st = await b.status("wf")
    assert st.queues["b"].queued == 20 and st.messages.rejected == 40
    assert (await a.stats()).rejected_by_code == {"queue_full": 40}


async def test_leased_messages_count_toward_the_limit_and_expired_leases_free_it(make_store):
    store = await make_store(max_message_queue_size=2)
    await store.send(req())
    await store.send(req())
    await store.receive("wf", "b", max_messages=2, timeout=0, visibility_timeout=0.2)
    with pytest.raises(QueueFullError):
        await store.send(req())
    await asyncio.sleep(0.25)
    with pytest.raises(QueueFullError):  # the leases ended: the messages are back, the queue is still full
        await store.send(req())
    assert (await store.status("wf")).messages.redelivered == 2


async def test_broadcast_is_all_or_nothing(make_store):
    store = await make_store(max_message_queue_size=2)
    await store.send(req("b"))
    await store.send(req("c"))
    await store.send(req("c"))  # c is full, b has room
    with pytest.raises(QueueFullError) as err:
        await store.send(req("*"))
    assert "'c'" in err.value.message and err.value.param == "target_agent"
    st = await store.status("wf")
    assert (st.queues["b"].queued, st.queues["c"].queued, st.messages.sent) == (1, 2, 3)
    await store.receive("wf", "c", max_messages=1, timeout=0)
    result = await store.send(req("*"))
    assert result.delivered_to == ("b", "c")
    [via_b] = (await store.receive("wf", "b", max_messages=5, timeout=0))[1:]
    [via_c] = (await store.receive("wf", "c", max_messages=5, timeout=0))[1:]
    assert via_b.message == via_c.message and via_b.message.target_agent == "*"


async def test_expired_messages_are_never_delivered_and_are_counted(make_store):
    store = await make_store()
    await store.send(req(ttl=0.15))
    live = await store.send(req(ttl=60))
    await store.send(req("c", ttl=0.15))
    await asyncio.sleep(0.2)
    assert ids(await store.receive("wf", "b", max_messages=10, timeout=0)) == [live.message_id]
    await store.sweep_once(force=True)  # the sweep finds the one nobody received
    st = await store.status("wf")
    assert st.messages.expired == 2 and st.queues["c"].queued == 0 and st.queued_messages == 0
    assert (await store.stats()).messages.expired == 2


async def test_message_size_and_workflow_and_agent_limits(make_store):
    a = await make_store(max_message_size=10, max_workflows=2, max_agents_per_workflow=3)
    b = await make_store(max_message_size=10, max_workflows=2, max_agents_per_workflow=3)
    with pytest.raises(MessageTooLargeError):
        await a.send(req(payload=b'"' + b"x" * 20 + b'"'))
    await a.send(req(wf="w1"))
    await b.send(req(wf="w2"))
    with pytest.raises(TooManyWorkflowsError):  # cluster-wide: w1 came through the other replica
        await b.send(req(wf="w3"))
    await a.send(req("c", wf="w1"))
    with pytest.raises(TooManyAgentsError):
        await b.send(req("d", wf="w1"))
    assert (await b.stats()).rejected_by_code == {
        "message_too_large": 1,
        "too_many_workflows": 1,
        "too_many_agents": 1,
    }


async def test_release_puts_messages_back_in_their_place(make_store):
    store = await make_store()
    sent = [(await store.send(req(payload=str(i).encode()))).message_id for i in range(4)]
    taken = await store.receive("wf", "b", max_messages=2, timeout=0)
    leased = await store.receive("wf", "b", max_messages=1, timeout=0, visibility_timeout=30)
    await store.release("wf", "b", leased)
    await store.release("wf", "b", taken)
    again = await store.receive("wf", "b", max_messages=10, timeout=0)
    assert ids(again) == sent and [d.delivery_count for d in again] == [1, 1, 1, 1]
    st = await store.status("wf")
    assert (st.messages.delivered, st.queued_messages, st.in_flight_messages) == (4, 0, 0)


# ---------------------------------------------------------------------- replicas


async def test_a_send_on_one_replica_wakes_a_long_poll_on_another(make_store):
    a, b = await make_store(), await make_store()
    poll = asyncio.create_task(b.receive("wf", "b", max_messages=10, timeout=10.0))
    await asyncio.sleep(0.1)  # b waits (its receive found nothing)
    sent_at = time.monotonic()
    sent = await a.send(req())
    assert ids(await asyncio.wait_for(poll, 5.0)) == [sent.message_id]
    assert time.monotonic() - sent_at < 1.0  # woken through pub/sub, not by the 5 s resync


async def test_a_lease_held_by_a_replica_that_is_gone_is_redelivered_by_another(make_store):
    a, b = await make_store(), await make_store()
    sent = await a.send(req())
    [held] = await a.receive("wf", "b", max_messages=1, timeout=0, visibility_timeout=0.5)
    await a.close()
    await a.aclose()  # the holder is gone without acknowledging
    started = time.monotonic()
    [again] = await asyncio.wait_for(b.receive("wf", "b", max_messages=1, timeout=10.0, visibility_timeout=30), 5)
    waited = time.monotonic() - started
    assert again.message.message_id == sent.message_id and again.delivery_count == 2
    assert 0.3 < waited < 1.5, waited  # at the end of the lease (the waiting replica's timer), not later
    assert (await b.ack("wf", "b", [held.message.message_id])).acked == (sent.message_id,)
    assert await b.receive("wf", "b", max_messages=1, timeout=0.6) == []


async def test_racing_receivers_on_three_replicas_get_every_message_exactly_once(make_store):
    stores = [await make_store(), await make_store(), await make_store()]
    total = 300
    got: list[str] = []
    done = asyncio.Event()

    async def receiver(store: RedisStore, batch: int) -> None:
        while not done.is_set():
            out = await store.receive("wf", "pool", max_messages=batch, timeout=0.5)
            got.extend(ids(out))
            if len(got) >= total:
                done.set()

    receivers = [asyncio.create_task(receiver(s, 1 + i % 4)) for i, s in enumerate(stores * 6)]
    await asyncio.sleep(0.05)
    sent = []
    for i in range(total):
        sent.append((await stores[i % 3].send(req("pool", str(i).encode()))).message_id)
    await asyncio.wait_for(done.wait(), 20)
    await asyncio.gather(*receivers)
    duplicates = [m for m, n in Counter(got).items() if n > 1]
    assert not duplicates and sorted(got) == sorted(sent)
    stats = await stores[0].stats()
    assert (stats.messages.sent, stats.messages.delivered, stats.queued_messages) == (total, total, 0)


async def test_status_and_stats_are_the_same_on_every_replica(make_store):
    a, b = await make_store(), await make_store()
    records = [
        RequestRecord(
            f"wf{i % 10}",
            RecordKind.ROUTED if i % 2 == 0 else RecordKind.COMPLETED,
            f"r{i}",
            f"agent{i % 3}",
            f"http://vllm-{i % 4}:8000" if i % 2 == 0 else "",
            affinity_hit=i % 3 == 0,
            failover=i % 50 == 0,
            routing_latency_seconds=0.001 * (i % 7),
            prompt_tokens=100 * (i % 5) if i % 2 else 0,
            cached_tokens=50 * (i % 3) if i % 2 and i % 5 else 0,
            status_code=500 if i % 97 == 1 else 200,
            model=("big" if i % 4 == 0 else f"small-{i % 3}") if i % 2 == 0 else "",
            identity_source=("prompt_cache_key" if i % 3 else "session_header") if i % 2 == 0 else "",
        )
        for i in range(1000)
    ]
    started = time.perf_counter()
    result = await a.record(records)
    elapsed = time.perf_counter() - started
    assert (result.accepted, result.rejected) == (1000, 0)
    assert elapsed < 0.5, elapsed  # one round trip per batch
    await a.send(req(wf="wf1", source="agent0", target="agent1"))
    for wf in ("wf0", "wf1", "wf9"):
        assert await a.status(wf) == await b.status(wf)
    assert set((await a.status("wf0")).model_instances) == {"big", "small-0", "small-1", "small-2"}
    sa, sb = await a.stats(), await b.stats()
    assert replace(sa, uptime_seconds=0.0) == replace(sb, uptime_seconds=0.0)
    # Same aggregates as the memory store computes from the same records.
    memory = MemoryStore(Settings())
    await memory.record(records)
    await memory.send(req(wf="wf1", source="agent0", target="agent1"))
    mem, red = await memory.status("wf1"), await a.status("wf1")
    assert red.avg_routing_latency_seconds == pytest.approx(mem.avg_routing_latency_seconds)
    assert replace(red, created_at=0, last_updated=0, avg_routing_latency_seconds=0) == replace(
        mem, created_at=0, last_updated=0, avg_routing_latency_seconds=0
    )


async def test_idle_workflows_are_removed_once_with_several_sweepers(make_store):
    stores = [await make_store(workflow_ttl=0.3, cleanup_interval=0.05) for _ in range(3)]
    for i in range(6):
        await stores[i % 3].send(req(wf=f"idle{i}"))
    deadline = time.monotonic() + 5
    while (await stores[0].stats()).active_workflows and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stats = await stores[1].stats()
    assert (stats.active_workflows, stats.workflows_expired, stats.messages.dropped) == (0, 6, 6)
    assert (stats.queues, stats.queued_messages) == (0, 0)
    with pytest.raises(NotFoundError):
        await stores[2].status("idle0")


# ---------------------------------------------------------------------- same answers as the memory store


def check_redis_invariants(url: str, prefix: str) -> None:
    """Every queue's structures agree with each other, with the counters, and bodies are not leaked."""
    import redis

    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        stats = r.hgetall(prefix + "stats")
        total_pending = total_leased = total_queues = 0
        for wf in r.zrange(prefix + "workflows", 0, -1):
            h = r.hgetall(f"{prefix}w/{wf}")
            agents = r.zrange(f"{prefix}a/{wf}", 0, -1)
            refs: Counter[str] = Counter()
            pending = leased = 0
            for agent in agents:
                q = f"{wf}/{agent}"
                entries = r.hgetall(f"{prefix}e/{q}")
                ready = set(r.zrange(f"{prefix}r/{q}", 0, -1))
                leases = set(r.zrange(f"{prefix}l/{q}", 0, -1))
                assert set(entries) == ready | leases and not ready & leases, q
                assert set(r.zrange(f"{prefix}x/{q}", 0, -1)) == ready, q
                for message_id in ready:
                    seq = entries[message_id].split("|")[0]
                    assert r.zscore(f"{prefix}r/{q}", message_id) == float(seq)
                refs.update(entries.keys())
                pending += len(entries)
                leased += len(leases)
            assert (int(h.get("pending", 0)), int(h.get("leased", 0))) == (pending, leased), wf
            bodies = r.hkeys(f"{prefix}b/{wf}")
            assert set(bodies) == set(refs), wf  # a body per message still queued or leased somewhere, no more
            copies = r.hgetall(f"{prefix}n/{wf}")
            for message_id, n in refs.items():
                assert int(copies.get(message_id, 1)) == n, (wf, message_id)
            total_pending, total_leased, total_queues = (
                total_pending + pending,
                total_leased + leased,
                total_queues + len(agents),
            )
        assert (int(stats.get("pending", 0)), int(stats.get("leased", 0))) == (total_pending, total_leased)
        assert int(stats.get("queues", 0)) == total_queues
    finally:
        r.close()


class StepClock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seed", range(4))
async def test_same_answers_as_the_memory_store(seed, redis_url, redis_prefix):
    """Random sends (unicast, broadcast, too large), receives (removing or leasing), acks, releases,
    deletions, router records, sweeps and clock jumps (TTL and lease expiry): identical results, status and
    stats from both stores."""
    rng = random.Random(seed)
    clock = StepClock()
    settings = Settings(
        max_message_queue_size=4, max_agents_per_workflow=4, max_workflows=2, max_message_size=64,
        workflow_ttl=40.0, cleanup_interval=60.0, max_batch_bytes=40,
    )  # fmt: skip
    message_id = ["m0"]  # the memory store draws an id only for a send it accepts, the Redis store for each
    memory = MemoryStore(settings, clock=clock, new_id=lambda: message_id[0])
    red = RedisStore(
        redis_settings(redis_url, redis_prefix, **{f: getattr(settings, f) for f in ("max_message_queue_size",
                       "max_agents_per_workflow", "max_workflows", "max_message_size", "workflow_ttl",
                       "cleanup_interval", "max_batch_bytes")}),
        clock=clock,
        new_id=lambda: message_id[0],
    )  # fmt: skip
    await memory.start()
    await red.start()
    workflows, agents = ("w1", "w2", "w3"), ("a", "b", "c", "d", "e")
    held: dict[tuple[str, str], list[Delivery]] = {}  # deliveries per queue that may be acked or released

    async def both(op: str, *args: object, **kwargs: object) -> object:
        outcomes = []
        for store in (memory, red):
            try:
                outcomes.append(("ok", await getattr(store, op)(*args, **kwargs)))
            except A2AError as exc:
                outcomes.append((type(exc).__name__, exc.code, exc.message, exc.param))
        assert outcomes[0] == outcomes[1], (op, args, kwargs)
        return outcomes[0][1] if outcomes[0][0] == "ok" else None

    try:
        for step in range(250):
            message_id[0] = f"m{step}"
            wf, agent = rng.choice(workflows), rng.choice(agents)
            roll = rng.random()
            if roll < 0.3:
                target = "*" if rng.random() < 0.2 else rng.choice(agents)
                size = rng.choice((1, 5, 30, 70))  # 70 is over the size limit
                ttl = rng.choice((None, 3.0, 30.0))
                await both("send", SendRequest(wf, agent, target, "t", b'"' + b"x" * size + b'"', ttl))
            elif roll < 0.55:
                vt = rng.choice((None, None, 2.0, 20.0))
                out = await both("receive", wf, agent, max_messages=rng.randint(1, 4), timeout=0, visibility_timeout=vt)
                if out:
                    held[(wf, agent)] = list(out)  # type: ignore[arg-type]
            elif roll < 0.65 and held:
                key = rng.choice(sorted(held))
                chosen = [d.message.message_id for d in held[key] if rng.random() < 0.7] + ["nope"]
                await both("ack", *key, chosen)
            elif roll < 0.72 and held:
                key = rng.choice(sorted(held))
                await both("release", *key, held.pop(key))
            elif roll < 0.76:
                await both("delete_workflow", wf)
            elif roll < 0.84:
                kind = rng.choice((RecordKind.ROUTED, RecordKind.COMPLETED, RecordKind.UNSPECIFIED))
                records = [
                    RequestRecord(rng.choice(workflows), kind, f"r{step}", rng.choice((*agents, "")),
                                  rng.choice(("", "i1", "i2")), affinity_hit=rng.random() < 0.5,
                                  routing_latency_seconds=rng.choice((0.25, 0.5, 0.125)),
                                  prompt_tokens=100, cached_tokens=rng.choice((0, 50)))
                    for _ in range(rng.randint(1, 5))
                ]  # fmt: skip
                await both("record", records)
            elif roll < 0.9:
                await memory.sweep_once()
                await red.sweep_once(force=True)
            else:
                clock.now += rng.choice((0.5, 1.0, 2.5, 5.0, 25.0))
            for w in workflows:
                await both("status", w)
            sm, sr = await memory.stats(), await red.stats()
            assert replace(sm, uptime_seconds=0) == replace(sr, uptime_seconds=0), step
            if step % 25 == 0:
                check_redis_invariants(redis_url, redis_prefix)
        check_redis_invariants(redis_url, redis_prefix)
        for w in workflows:
            with contextlib.suppress(NotFoundError):
                await red.delete_workflow(w)
        left = {k for k in await keys_under(redis_url, redis_prefix) if "/" in k and not k.startswith("wt/")}
        assert left == set()  # nothing leaked once every workflow is gone
    finally:
        await memory.close()
        await red.close()
        await red.aclose()
