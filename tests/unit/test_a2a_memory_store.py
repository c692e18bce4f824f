"""The asyncio layer of the stores: long-poll wake-ups, fairness, cancellation, leases, shutdown.

Every test runs against the memory store and against the Redis store (on the system Redis, with a key prefix
of its own; skipped with the reason when Redis is unreachable). Timing bounds are generous behaviour checks
(e.g. "returns within 2 s of a send, with a 10 s timeout"), not benchmarks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from a2a_service import MemoryStore, NotFoundError, SendRequest, Settings, Store
from tests.redis.support import delete_prefix, system_redis_url, unique_prefix

StoreFactory = Callable[..., Awaitable[Store]]


def req(target: str = "b", payload: bytes = b"{}", wf: str = "wf") -> SendRequest:
    return SendRequest(wf, "a", target, "data", payload)


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """``await make_store(**settings)``: a started store of the parametrized kind."""
    stores: list[Store] = []
    redis: tuple[str, str] | None = None

    async def make(**overrides: object) -> Store:
        nonlocal redis
        settings = Settings(**overrides)  # type: ignore[arg-type]
        if request.param == "memory":
            store: Store = MemoryStore(settings)
        else:
            from a2a_service import RedisStore

            if redis is None:
                redis = (system_redis_url(), unique_prefix("store"))
            store = RedisStore(replace(settings, store=redis[0], redis_prefix=redis[1]))
        await store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()
        await store.aclose()
    if redis is not None:
        delete_prefix(*redis)


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return await make_store(cleanup_interval=60.0)


def batch_for(store: Store, memory_batch: int) -> int:
    """The memory store hands each send to a waiter synchronously, so a waiter asking for several messages
    still gets exactly one per send; with Redis a waiter may find several that arrived meanwhile, so tests
    about one message per waiter ask for one."""
    return memory_batch if isinstance(store, MemoryStore) else 1


async def exists(store: Store, workflow_id: str) -> bool:
    try:
        await store.status(workflow_id)
    except NotFoundError:
        return False
    return True


async def wait_until_waiting(store: Store, key: tuple[str, str], count: int = 1) -> None:
    for _ in range(200):
        if len(store._waiters.get(key, ())) >= count:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{count} waiter(s) never registered on {key}")


async def test_long_poll_returns_as_soon_as_a_message_arrives(store):
    started = time.monotonic()
    poll = asyncio.create_task(store.receive("wf", "b", max_messages=10, timeout=10.0))
    await wait_until_waiting(store, ("wf", "b"))
    result = await store.send(req(payload=b'{"hello":1}'))
    out = await asyncio.wait_for(poll, 2.0)
    assert [d.message.message_id for d in out] == [result.message_id]
    assert time.monotonic() - started < 5.0  # far below the 10 s timeout


async def test_empty_queue_times_out_with_empty_list(store):
    started = time.monotonic()
    assert await store.receive("wf", "b", max_messages=10, timeout=0.1) == []
    assert time.monotonic() - started >= 0.09
    assert store._waiters == {}


async def test_timeout_is_capped(make_store):
    s = await make_store(receive_timeout_cap=0.05)
    started = time.monotonic()
    assert await s.receive("wf", "b", max_messages=1, timeout=1000.0) == []
    assert time.monotonic() - started < 5.0


async def test_waiters_are_served_in_arrival_order(store):
    polls = []
    for _ in range(5):
        polls.append(asyncio.create_task(store.receive("wf", "b", max_messages=batch_for(store, 10), timeout=10.0)))
        await wait_until_waiting(store, ("wf", "b"), len(polls))
    sent = []
    for i in range(5):
        sent.append((await store.send(req(payload=str(i).encode()))).message_id)
        await asyncio.sleep(0)
    results = await asyncio.wait_for(asyncio.gather(*polls), 2.0)
    assert [[d.message.message_id for d in r] for r in results] == [[m] for m in sent]


async def test_a_new_receiver_does_not_overtake_a_waiting_one(store):
    first = asyncio.create_task(store.receive("wf", "b", max_messages=1, timeout=10.0))
    await wait_until_waiting(store, ("wf", "b"))
    second = asyncio.create_task(store.receive("wf", "b", max_messages=1, timeout=10.0))
    await wait_until_waiting(store, ("wf", "b"), 2)
    one = await store.send(req())
    assert [d.message.message_id for d in await asyncio.wait_for(first, 2.0)] == [one.message_id]
    assert not second.done()
    two = await store.send(req())
    assert [d.message.message_id for d in await asyncio.wait_for(second, 2.0)] == [two.message_id]


async def test_many_waiters_each_get_distinct_messages(store):
    batch = batch_for(store, 3)
    polls = [asyncio.create_task(store.receive("wf", "b", max_messages=batch, timeout=10.0)) for _ in range(20)]
    await wait_until_waiting(store, ("wf", "b"), 20)
    sent = {(await store.send(req())).message_id for _ in range(20)}
    got = [d.message.message_id for r in await asyncio.wait_for(asyncio.gather(*polls), 5.0) for d in r]
    assert sorted(got) == sorted(sent)  # every message once, nobody starved (20 waiters, 20 messages)


async def test_cancelled_waiter_that_was_handed_messages_puts_them_back(store):
    poll = asyncio.create_task(store.receive("wf", "b", max_messages=10, timeout=10.0))
    await wait_until_waiting(store, ("wf", "b"))
    sent = await store.send(req())  # hands the message to the waiter's future synchronously
    poll.cancel()  # ...but the waiter goes away before it runs
    with pytest.raises(asyncio.CancelledError):
        await poll
    out = await store.receive("wf", "b", max_messages=10, timeout=0)
    assert [d.message.message_id for d in out] == [sent.message_id]
    assert out[0].delivery_count == 1


async def test_cancelled_waiter_before_any_message_leaves_no_trace(store):
    poll = asyncio.create_task(store.receive("wf", "b", max_messages=10, timeout=10.0))
    await wait_until_waiting(store, ("wf", "b"))
    poll.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poll
    assert store._waiters == {}
    await store.send(req())
    assert len(await store.receive("wf", "b", max_messages=10, timeout=0)) == 1


async def test_expired_lease_is_redelivered_to_a_waiting_receiver_by_timer(store):
    # cleanup_interval is 60 s: only the lease timer can deliver this in time.
    await store.send(req())
    [leased] = await store.receive("wf", "b", max_messages=1, timeout=0, visibility_timeout=0.1)
    again = await asyncio.wait_for(store.receive("wf", "b", max_messages=1, timeout=10.0), 5.0)
    assert again[0].message.message_id == leased.message.message_id
    assert again[0].delivery_count == 2


async def test_acked_lease_is_not_redelivered(store):
    await store.send(req())
    [leased] = await store.receive("wf", "b", max_messages=1, timeout=0, visibility_timeout=0.1)
    assert (await store.ack("wf", "b", [leased.message.message_id])).acked
    assert await store.receive("wf", "b", max_messages=1, timeout=0.3) == []


async def test_release_makes_messages_receivable_again_and_wakes_waiters(store):
    await store.send(req())
    taken = await store.receive("wf", "b", max_messages=1, timeout=0)
    poll = asyncio.create_task(store.receive("wf", "b", max_messages=1, timeout=10.0))
    await wait_until_waiting(store, ("wf", "b"))
    await store.release("wf", "b", taken)
    out = await asyncio.wait_for(poll, 2.0)
    assert out[0].message.message_id == taken[0].message.message_id


async def test_close_wakes_waiters_and_stops_waiting(make_store):
    s = await make_store()
    poll = asyncio.create_task(s.receive("wf", "b", max_messages=1, timeout=30.0))
    await wait_until_waiting(s, ("wf", "b"))
    await s.close()
    assert await asyncio.wait_for(poll, 2.0) == []
    assert s.closing
    started = time.monotonic()
    assert await s.receive("wf", "b", max_messages=1, timeout=30.0) == []
    assert time.monotonic() - started < 1.0


async def test_background_sweep_removes_idle_workflows(make_store):
    s = await make_store(workflow_ttl=0.05, cleanup_interval=0.02)
    await s.send(req())
    for _ in range(250):
        if not await exists(s, "wf"):
            break
        await asyncio.sleep(0.02)
    assert not await exists(s, "wf")
    assert (await s.stats()).workflows_expired == 1


async def test_waiter_survives_workflow_deletion_and_gets_later_messages(store):
    await store.send(req())
    poll = asyncio.create_task(store.receive("wf", "c", max_messages=1, timeout=10.0))
    await wait_until_waiting(store, ("wf", "c"))
    await store.delete_workflow("wf")
    sent = await store.send(req("c"))
    out = await asyncio.wait_for(poll, 2.0)
    assert out[0].message.message_id == sent.message_id


async def test_broadcast_wakes_every_waiting_agent(store):
    polls = {}
    for agent in ("x", "y"):
        polls[agent] = asyncio.create_task(store.receive("wf", agent, max_messages=1, timeout=10.0))
        await wait_until_waiting(store, ("wf", agent))
    result = await store.send(SendRequest("wf", "x", "*", "data", b"{}"))
    assert result.delivered_to == ("y",)
    assert len(await asyncio.wait_for(polls["y"], 2.0)) == 1
    assert not polls["x"].done()  # the sender does not receive its own broadcast
    polls["x"].cancel()
