"""SIGTERM of a real A2A process: open long-polls and Subscribe streams end early and cleanly, the process
exits 0 within its grace bound, the LLM route through Envoy keeps working, and no message is lost (Redis) or
the loss is reported (memory)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest

from a2a_service import A2AClient, A2AGrpcClient, Delivery
from benchmarks.stack import Stack
from tests.a2a.test_a2a_process import listening, spawn
from tests.conftest import stack_options

GRACE = 3.0
LONG_POLL = 30.0  # far beyond what a graceful stop may take


@pytest.fixture
def redis_stack() -> Iterator[Stack]:
    options = stack_options(instances=1, redis="private",
                            a2a_args=("--max-message-queue-size", "20", "--shutdown-grace", str(GRACE)))
    with Stack(options) as stack:
        yield stack


async def _llm(client: httpx.AsyncClient, stack: Stack, workflow_id: str) -> int:
    r = await client.post(f"{stack.url}/v1/completions", json={
        "model": "m", "prompt": "keep serving", "max_tokens": 2,
        "workflow_metadata": {"workflow_id": workflow_id, "agent_id": "a"}})
    return r.status_code


async def _subscribe(target: str, workflow_id: str, agent: str, started: asyncio.Event) -> list[list[Delivery]]:
    batches: list[list[Delivery]] = []
    async with A2AGrpcClient(target) as client:
        stream = client.subscribe_batches(workflow_id, agent)
        started.set()
        async for batch in stream:  # ends without an exception only if the server closed the stream with OK
            batches.append(batch)
    return batches


async def test_sigterm_ends_long_polls_early_and_keeps_redis_messages(redis_stack: Stack) -> None:
    a2a = redis_stack.a2a
    assert a2a is not None
    workflow_id = f"stop-{uuid.uuid4().hex[:8]}"
    http_url, grpc_target = f"http://127.0.0.1:{a2a.ports['http']}", f"127.0.0.1:{a2a.ports['grpc']}"
    async with A2AClient(http_url) as sender:
        for i in range(3):
            await sender.send(workflow_id, "planner", "later", {"i": i})  # stays queued across the restart
    subscribed = asyncio.Event()
    async with A2AClient(http_url, timeout=LONG_POLL) as poller, httpx.AsyncClient(timeout=30) as client:
        poll = asyncio.create_task(poller.receive(workflow_id, "waiter", timeout=LONG_POLL))
        subscription = asyncio.create_task(_subscribe(grpc_target, workflow_id, "subscriber", subscribed))
        await asyncio.wait_for(subscribed.wait(), 5)
        await asyncio.sleep(0.5)  # both wait server-side on empty queues
        assert not poll.done() and not subscription.done()

        a2a.popen.send_signal(signal.SIGTERM)
        during = await _llm(client, redis_stack, workflow_id)
        # A 200 with a JSON body and a stream closed with OK can only come from a server still running.
        assert await asyncio.wait_for(poll, 10) == []
        assert await asyncio.wait_for(subscription, 10) == []
        code = await asyncio.to_thread(a2a.popen.wait, GRACE + 5)
        after = await _llm(client, redis_stack, workflow_id)
    assert code == 0
    assert (during, after) == (200, 200)  # the LLM route does not depend on the A2A service
    records = [orjson.loads(line) for line in a2a.log_tail(500).splitlines() if line.startswith("{")]
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], records  # a clean stop

    redis_stack.a2as.remove(a2a)
    fresh = redis_stack.start_a2a()
    async with A2AClient(f"http://127.0.0.1:{fresh.ports['http']}") as receiver:
        kept = await receiver.receive(workflow_id, "later", timeout=5, max_messages=10)
    assert sorted(d.message.json()["i"] for d in kept) == [0, 1, 2]


async def test_memory_store_reports_the_messages_a_stop_drops() -> None:
    proc = spawn("--log-level", "info", "--shutdown-grace", "1")
    try:
        http_port, _ = listening(proc)
        async with A2AClient(f"http://127.0.0.1:{http_port}") as a2a:
            for target in ("b", "b", "c"):
                await a2a.send("wf-drop", "a", target, {"x": 1})
            await a2a.receive("wf-drop", "c", ack=True)  # leased, not acked: dropped too
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
        assert proc.stderr is not None
        lines = [orjson.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert code == 0
    [warning] = [r for r in lines if r.get("dropped_messages") is not None]
    assert warning["level"] == "WARNING"
    assert (warning["dropped_messages"], warning["queued"], warning["in_flight"]) == (3, 2, 1)
