"""Two real A2A replicas (``python -m a2a_service --store redis://…`` processes) on the system Redis.

Send through one and long-poll through the other; many receivers on both never get a message twice; status
and stats are the same whichever replica answers; a replica SIGKILLed while holding a lease loses nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from a2a_service import A2AClient, A2AGrpcClient, RecordKind, RequestRecord
from tests.redis.support import ServiceProcess, delete_prefix, system_redis_url, unique_prefix


def replica_args(url: str, prefix: str) -> list[str]:
    return ["--store", url, "--redis-prefix", prefix, "--log-level", "warning", "--cleanup-interval", "0.2",
            "--shutdown-grace", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def replicas() -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    url, prefix = system_redis_url(), unique_prefix("replicas")
    pair = (ServiceProcess(replica_args(url, prefix)), ServiceProcess(replica_args(url, prefix)))
    try:
        yield pair
    finally:
        for replica in pair:
            replica.stop()
        delete_prefix(url, prefix)


async def test_send_through_one_replica_long_poll_through_the_other_returns_promptly(replicas):
    a, b = replicas
    async with A2AClient(a.http_url) as via_a, A2AClient(b.http_url) as via_b:
        for attempt in range(3):
            poll = asyncio.create_task(via_b.receive("wf-poll", "b", timeout=10.0))
            await asyncio.sleep(0.3)  # the receive is waiting in replica B
            sent_at = time.monotonic()
            sent = await via_a.send("wf-poll", "a", "b", {"attempt": attempt})
            out = await asyncio.wait_for(poll, 5.0)
            assert time.monotonic() - sent_at < 1.0  # woken at once, far from the 10 s timeout
            assert [d.message.message_id for d in out] == [sent.message_id]
    async with A2AGrpcClient(b.grpc_target) as grpc_b, A2AClient(a.http_url) as via_a:  # a Subscribe stream too
        got: list[str] = []

        async def consume() -> None:
            async for delivery in grpc_b.subscribe("wf-poll", "sub"):
                got.append(delivery.message.message_id)
                if len(got) == 5:
                    return

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        sent_ids = [(await via_a.send("wf-poll", "a", "sub", i)).message_id for i in range(5)]
        await asyncio.wait_for(consumer, 5.0)
        assert got == sent_ids


async def test_many_receivers_on_both_replicas_get_every_message_exactly_once(replicas):
    a, b = replicas
    total = 400
    got: list[str] = []
    done = asyncio.Event()

    async def receiver(url: str, batch: int) -> None:
        async with A2AClient(url) as client:
            while not done.is_set():
                out = await client.receive("wf-race", "pool", timeout=1.0, max_messages=batch)
                got.extend(d.message.message_id for d in out)
                if len(got) >= total:
                    done.set()

    async def sender(url: str, count: int, tag: str) -> list[str]:
        async with A2AClient(url) as client:
            return [(await client.send("wf-race", tag, "pool", i)).message_id for i in range(count)]

    receivers = [asyncio.create_task(receiver(r.http_url, 1 + i % 5)) for i, r in enumerate((a, b) * 8)]
    await asyncio.sleep(0.3)
    sent_a, sent_b = await asyncio.gather(sender(a.http_url, total // 2, "sa"), sender(b.http_url, total // 2, "sb"))
    await asyncio.wait_for(done.wait(), 20.0)
    await asyncio.wait_for(asyncio.gather(*receivers), 5.0)
    duplicates = [m for m, n in Counter(got).items() if n > 1]
    assert duplicates == []
    assert sorted(got) == sorted(sent_a + sent_b)  # none lost
    async with A2AClient(a.http_url) as via_a:
        status = await via_a.status("wf-race")
    assert (status.messages.sent, status.messages.delivered, status.queued_messages) == (total, total, 0)


async def test_status_and_stats_are_identical_on_both_replicas(replicas):
    a, b = replicas
    records = [
        RequestRecord(
            f"wf-stats-{i % 5}",
            RecordKind.ROUTED if i % 2 == 0 else RecordKind.COMPLETED,
            f"r{i}",
            f"agent-{i % 3}",
            f"http://vllm-{i % 2}:8000" if i % 2 == 0 else "",
            affinity_hit=i % 4 == 0,
            routing_latency_seconds=0.002,
            prompt_tokens=200 if i % 2 else 0,
            cached_tokens=150 if i % 4 == 1 else 0,
        )
        for i in range(1000)
    ]
    async with A2AGrpcClient(a.grpc_target) as grpc_a:  # the router's path: one RecordRequests batch
        result = await grpc_a.record_requests(records)
        assert (result.accepted, result.rejected) == (1000, 0)
        await grpc_a.send("wf-stats-0", "agent-0", "agent-1", {"x": 1})
    async with (
        A2AClient(a.http_url) as via_a,
        A2AClient(b.http_url) as via_b,
        A2AGrpcClient(b.grpc_target) as grpc_b,
        httpx.AsyncClient(base_url=a.http_url) as raw_a,
        httpx.AsyncClient(base_url=b.http_url) as raw_b,
    ):
        for wf in ("wf-stats-0", "wf-stats-3"):
            json_a = (await raw_a.get(f"/v1/workflows/{wf}/status")).json()
            json_b = (await raw_b.get(f"/v1/workflows/{wf}/status")).json()
            assert json_a == json_b
            assert await grpc_b.status(wf) == await via_a.status(wf)
        status = await via_b.status("wf-stats-0")
        assert status.total_requests == 100 and status.assigned_instance == "http://vllm-0:8000"
        stats_a = (await raw_a.get("/v1/workflows/stats")).json()
        stats_b = (await raw_b.get("/v1/workflows/stats")).json()
        stats_a.pop("uptime_seconds"), stats_b.pop("uptime_seconds")
        assert stats_a == stats_b
        assert stats_a["total_requests"] >= 500


async def test_a_killed_replica_holding_leases_loses_nothing():
    url, prefix = system_redis_url(), unique_prefix("kill")
    a, b = ServiceProcess(replica_args(url, prefix)), ServiceProcess(replica_args(url, prefix))
    try:
        async with A2AClient(a.http_url) as via_a, A2AClient(b.http_url) as via_b:
            sent = [(await via_a.send("wf-kill", "a", "worker", {"n": i})).message_id for i in range(2)]
            leased = await via_a.receive("wf-kill", "worker", ack=True, visibility_timeout=1.5, max_messages=10)
            leased_at = time.monotonic()
            assert [d.message.message_id for d in leased] == sent
            assert await via_b.receive("wf-kill", "worker", timeout=0) == []  # leased: invisible
            poll = asyncio.create_task(via_b.receive("wf-kill", "worker", timeout=10.0, ack=True, max_messages=10))
            await asyncio.sleep(0.2)
            a.kill()  # SIGKILL while holding the leases, nothing acknowledged
            again = await asyncio.wait_for(poll, 8.0)
            waited = time.monotonic() - leased_at
            assert [d.message.message_id for d in again] == sent  # FIFO order kept
            assert [d.delivery_count for d in again] == [2, 2]
            assert 1.3 < waited < 3.0, waited  # at the end of the lease, through the surviving replica
            assert (await via_b.ack("wf-kill", "worker", sent)).acked == tuple(sent)
            status = await via_b.status("wf-kill")
            assert (status.messages.redelivered, status.messages.acked, status.in_flight_messages) == (2, 2, 0)
            assert status.queued_messages == 0
    finally:
        a.kill()
        b.stop()
        delete_prefix(url, prefix)
