"""The A2A service through Envoy on the gateway port, and the router's reports in the workflow status."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import orjson
import pytest

from a2a_service import NotFoundError
from a2a_service.client import A2AClient, A2AGrpcClient
from benchmarks.demo import wait_for_status
from benchmarks.stack import Stack

CONTEXT = " ".join(f"clause {i}: the supplier delivers lot {i} within {i % 9 + 1} days." for i in range(90))


def wid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_send_then_long_poll_returns_promptly(stack: Stack) -> None:
    workflow_id = wid("a2a")
    async with A2AClient(stack.url) as a2a:
        await a2a.send(workflow_id, "collector", "analyzer", {"n": 9007199254740993, "ok": True})
        started = time.monotonic()
        received = await a2a.receive(workflow_id, "analyzer", timeout=10, max_messages=10)
        assert time.monotonic() - started < 5  # a waiting message is returned at once, not after the timeout
    assert [d.message.json() for d in received] == [{"n": 9007199254740993, "ok": True}]


async def test_empty_queue_waits_for_a_message_sent_meanwhile(stack: Stack) -> None:
    workflow_id = wid("a2a-wait")
    async with A2AClient(stack.url) as receiver, A2AClient(stack.url) as sender:
        waiting = asyncio.create_task(receiver.receive(workflow_id, "analyzer", timeout=20))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        sent_at = time.monotonic()
        await sender.send(workflow_id, "collector", "analyzer", {"step": 1})
        received = await waiting
        assert time.monotonic() - sent_at < 5
    assert [d.message.json() for d in received] == [{"step": 1}]
    async with A2AClient(stack.url) as a2a:
        started = time.monotonic()
        assert await a2a.receive(workflow_id, "analyzer", timeout=0.5) == []
        assert time.monotonic() - started >= 0.45


async def test_limits_answer_clear_json_errors_through_envoy(stack: Stack) -> None:
    workflow_id = wid("a2a-limits")
    url = f"{stack.url}/v1/workflows/{workflow_id}/messages"
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(20):  # the test stack's queue limit
            r = await client.post(url, json={"source_agent": "a", "target_agent": "b", "payload": {"i": i}})
            assert r.status_code == 200, r.text
        full = await client.post(url, json={"source_agent": "a", "target_agent": "b", "payload": {}})
        assert full.status_code == 429 and full.json()["error"]["code"]
        huge = await client.post(url, json={"source_agent": "a", "target_agent": "c",
                                            "payload": {"blob": "x" * (1024 * 1024 + 10)}})
        assert huge.status_code == 413 and huge.json()["error"]["message"]
        malformed = await client.post(url, content=b'{"source_agent": "a", "target_agent": ',
                                      headers={"content-type": "application/json"})
        assert 400 <= malformed.status_code < 500 and "error" in malformed.json()
        wrong_type = await client.post(url, json={"source_agent": 5, "target_agent": "b", "payload": {}})
        assert 400 <= wrong_type.status_code < 500
        assert "source_agent" in orjson.dumps(wrong_type.json()).decode()
        unknown = await client.get(f"{stack.url}/v1/workflows/{wid('nobody')}/status")
        assert unknown.status_code == 404 and unknown.json()["error"]


async def test_ack_mode_redelivers_an_unacknowledged_message(stack: Stack) -> None:
    workflow_id = wid("a2a-ack")
    async with A2AClient(stack.url) as a2a:
        await a2a.send(workflow_id, "a", "b", {"job": 1})
        first = await a2a.receive(workflow_id, "b", timeout=5, ack=True, visibility_timeout=0.5)
        assert len(first) == 1
        assert await a2a.receive(workflow_id, "b", timeout=0.2, ack=True) == []  # leased: invisible
        again = await a2a.receive(workflow_id, "b", timeout=5, ack=True, visibility_timeout=5)
        assert [d.message.json() for d in again] == [{"job": 1}]
        assert again[0].delivery_count == 2
        acked = await a2a.ack(workflow_id, "b", [again[0].message.message_id])
        assert list(acked.acked) == [again[0].message.message_id]
        assert await a2a.receive(workflow_id, "b", timeout=0.6, ack=True) == []


async def test_status_reflects_llm_requests_routed_through_the_gateway(stack: Stack) -> None:
    workflow_id = wid("a2a-status")
    prompt_tokens = cached_tokens = 0
    async with httpx.AsyncClient(timeout=30) as client, A2AClient(stack.url) as a2a:
        served = set()
        for step in range(4):
            payload = {"model": "m", "prompt": f"{CONTEXT} step {step}", "max_tokens": 6,
                       "workflow_metadata": {"workflow_id": workflow_id, "agent_id": f"agent-{step % 2}"}}
            if step % 2:  # streaming responses count too
                payload.update(stream=True, stream_options={"include_usage": True})
                async with client.stream("POST", f"{stack.url}/v1/completions", json=payload) as r:
                    lines = [line async for line in r.aiter_lines() if line.startswith("data: {")]
                    usage = orjson.loads(lines[-1][6:])["usage"]
                    served.add(r.headers["x-served-by"])
            else:
                r = await client.post(f"{stack.url}/v1/completions", json=payload)
                usage = r.json()["usage"]
                served.add(r.headers["x-served-by"])
            prompt_tokens += usage["prompt_tokens"]
            cached_tokens += usage["prompt_tokens_details"]["cached_tokens"]
        status = await wait_for_status(a2a, workflow_id, completed=4)
    assert len(served) == 1
    assert status.total_requests == 4 and status.completed_requests == 4
    # The seed document's assigned_instance: the instance's base URL (the router knows it from --backends).
    assert status.assigned_instance == f"http://127.0.0.1:{stack.backends[served.pop()]}"
    assert status.affinity_hits == 3
    assert status.active_agents == 2
    assert status.prompt_tokens == prompt_tokens and status.cached_tokens == cached_tokens
    assert status.cache_hits == 3
    assert status.cache_hit_rate == pytest.approx(3 / 4)  # cache_hits / total_requests (the seed's definition)
    assert status.cached_token_rate == pytest.approx(cached_tokens / prompt_tokens)


async def test_grpc_api_does_the_same_operations(stack: Stack) -> None:
    assert stack.a2a is not None
    workflow_id = wid("a2a-grpc")
    async with A2AGrpcClient(f"127.0.0.1:{stack.a2a.ports['grpc']}") as a2a:
        await a2a.send(workflow_id, "a", "b", {"hello": "grpc"})
        received = await a2a.receive(workflow_id, "b", timeout=5)
        assert [d.message.json() for d in received] == [{"hello": "grpc"}]
        await a2a.send(workflow_id, "a", "b", {"job": 2})
        leased = await a2a.receive(workflow_id, "b", timeout=5, ack=True, visibility_timeout=0.3)
        redelivered = await a2a.receive(workflow_id, "b", timeout=5, ack=True)
        assert redelivered[0].message.message_id == leased[0].message.message_id
        await a2a.ack(workflow_id, "b", [redelivered[0].message.message_id])
        status = await a2a.status(workflow_id)
        assert status.messages.sent == 2 and status.messages.acked == 1
        stats = await a2a.stats()
        assert stats.active_workflows >= 1
        await a2a.delete_workflow(workflow_id)
        with pytest.raises(NotFoundError):
            await a2a.status(workflow_id)
