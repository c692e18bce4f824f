"""The HTTP API of a running service (real sockets, port 0)."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from a2a_service import A2AClient, InvalidRequestError, MalformedJSONError, NotFoundError, QueueFullError


async def test_long_poll_returns_promptly_after_a_send(server, http, waiting):
    poll = asyncio.create_task(http.receive("wf", "analyzer", timeout=10.0))
    await waiting(server, "wf", "analyzer")
    sent_at = time.monotonic()
    sent = await http.send("wf", "collector", "analyzer", {"findings": ["trend_up"]}, message_type="data")
    out = await asyncio.wait_for(poll, 5.0)
    assert time.monotonic() - sent_at < 3.0  # well before the 10 s timeout
    assert [d.message.message_id for d in out] == [sent.message_id]
    assert out[0].message.json() == {"findings": ["trend_up"]}


async def test_empty_queue_waits_then_returns_empty(http):
    started = time.monotonic()
    assert await http.receive("wf", "nobody-writes", timeout=0.3) == []
    assert time.monotonic() - started >= 0.25


async def test_waiting_receive_gets_a_message_sent_meanwhile(server, http, waiting):
    poll = asyncio.create_task(http.receive("wf", "b", timeout=5.0, max_messages=10))
    await waiting(server, "wf", "b")
    await asyncio.sleep(0.2)  # the receiver has been waiting on an empty queue for a while
    await http.send("wf", "a", "b", 1)
    assert len(await asyncio.wait_for(poll, 5.0)) == 1


async def test_fifo_and_batches(http):
    sent = [(await http.send("wf", "a", "b", i)).message_id for i in range(5)]
    first = await http.receive("wf", "b", max_messages=2)
    rest = await http.receive("wf", "b", max_messages=10)
    assert [d.message.message_id for d in first + rest] == sent


async def test_full_queue_is_429(server, http):
    for i in range(5):
        await http.send("wf", "a", "b", i)
    with pytest.raises(QueueFullError) as err:
        await http.send("wf", "a", "b", 5)
    assert err.value.param == "target_agent"
    async with httpx.AsyncClient(base_url=server.http_url) as raw:
        r = await raw.post("/v1/workflows/wf/messages", json={"source_agent": "a", "target_agent": "b"})
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "queue_full"


async def test_oversized_message_is_413_with_and_without_content_length(server):
    big = b'{"source_agent": "a", "target_agent": "b", "payload": "' + b"x" * (200 * 1024) + b'"}'

    async def chunks():
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    async with httpx.AsyncClient(base_url=server.http_url) as raw:
        r = await raw.post("/v1/workflows/wf/messages", content=big)
        assert r.status_code == 413 and r.json()["error"]["param"] == "body"
        r = await raw.post("/v1/workflows/wf/messages", content=chunks())  # chunked: no Content-Length
        assert r.status_code == 413 and r.json()["error"]["code"] == "message_too_large"
        # A payload just over the limit inside a body the size check lets through.
        body = b'{"source_agent": "a", "target_agent": "b", "payload": "' + b"x" * (64 * 1024) + b'"}'
        r = await raw.post("/v1/workflows/wf/messages", content=body)
        assert r.status_code == 413 and r.json()["error"]["param"] == "payload"
        # The connection is still usable afterwards.
        r = await raw.post("/v1/workflows/wf/messages", json={"source_agent": "a", "target_agent": "b"})
        assert r.status_code == 200


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        (b'{"source_agent": "a", "target_agent": ', 400, "body"),
        (b'{"source_agent": "a"}', 422, "target_agent"),
        (b'{"source_agent": "a", "target_agent": "b", "ttl": -5}', 422, "ttl"),
        (b'{"source_agent": "a", "target_agent": "b", "payload": ' + b"[" * 64 + b"]" * 64 + b"}", 422, "payload"),
    ],
)
async def test_malformed_input_is_4xx_naming_the_field(server, content, status, param):
    async with httpx.AsyncClient(base_url=server.http_url) as raw:
        r = await raw.post("/v1/workflows/wf/messages", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert r.json()["error"]["param"] == param


async def test_client_raises_typed_errors(http):
    with pytest.raises(MalformedJSONError):
        await http._call("POST", "/v1/workflows/wf/messages", body=[1])
    with pytest.raises(InvalidRequestError) as err:
        await http.send("wf", "a", "b c")
    assert err.value.param == "target_agent"


async def test_ack_mode_redelivers_after_the_lease_unless_acknowledged(http):
    await http.send("wf", "a", "b", {"n": 1})
    await http.send("wf", "a", "b", {"n": 2})
    first = await http.receive("wf", "b", ack=True, visibility_timeout=0.3, max_messages=2)
    assert [d.delivery_count for d in first] == [1, 1]
    assert all(d.lease_expires_at is not None for d in first)
    assert await http.receive("wf", "b") == []  # leased: invisible
    await http.ack("wf", "b", [first[0].message.message_id])
    again = await http.receive("wf", "b", timeout=5.0, ack=True, visibility_timeout=30)
    assert [d.message.json() for d in again] == [{"n": 2}]
    assert again[0].delivery_count == 2
    result = await http.ack("wf", "b", [again[0].message.message_id, "unknown"])
    assert result.acked == (again[0].message.message_id,) and result.not_found == ("unknown",)
    status = await http.status("wf")
    assert (status.messages.redelivered, status.messages.acked, status.in_flight_messages) == (1, 2, 0)


async def test_status_stats_delete_and_404(http):
    await http.send("wf", "a", "b")
    await http.send("wf", "b", "*")
    status = await http.status("wf")
    assert status.workflow_id == "wf" and status.active_agents == 2
    assert status.queues["a"].queued == 1 and status.queues["b"].queued == 1
    stats = await http.stats()
    assert stats.active_workflows == 1 and stats.queued_messages == 2 and stats.messages.sent == 2
    deleted = await http.delete_workflow("wf")
    assert deleted.dropped_messages == 2
    with pytest.raises(NotFoundError):
        await http.status("wf")
    with pytest.raises(NotFoundError):
        await http.delete_workflow("wf")
    assert (await http.stats()).messages.dropped == 2


async def test_workflows_are_isolated(http):
    await http.send("wf-a", "a", "b", "secret")
    assert await http.receive("wf-b", "b") == []
    assert len(await http.receive("wf-a", "b")) == 1


async def test_concurrent_waiters_are_served_fairly(server, waiting):
    async with A2AClient(server.http_url) as http:
        polls = []
        for i in range(6):
            polls.append(asyncio.create_task(http.receive("wf", "pool", timeout=10.0, max_messages=5)))
            await waiting(server, "wf", "pool", i + 1)
        sent = []
        for i in range(6):
            sent.append((await http.send("wf", "a", "pool", i)).message_id)
        results = await asyncio.wait_for(asyncio.gather(*polls), 5.0)
    # Each waiter got exactly one message, in the order the waiters arrived: no one starved.
    assert [[d.message.message_id for d in r] for r in results] == [[m] for m in sent]


async def test_a_disconnected_long_poll_does_not_swallow_a_message(server, http, waiting):
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(b"GET /v1/workflows/wf/agents/b/messages?timeout=20 HTTP/1.1\r\nhost: x\r\n\r\n")
        await waiting(server, "wf", "b")
    for _ in range(400):  # the server notices the disconnect and withdraws the waiter
        if not server.store._waiters:
            break
        await asyncio.sleep(0.005)
    assert not server.store._waiters
    sent = await http.send("wf", "a", "b")
    assert [d.message.message_id for d in await http.receive("wf", "b")] == [sent.message_id]


async def test_records_over_http_show_in_status(http):
    from a2a_service import RecordKind, RequestRecord

    result = await http.record_requests(
        [
            RequestRecord("wf", RecordKind.ROUTED, "r1", "a", "http://vllm-1:8000", affinity_hit=False),
            RequestRecord("wf", RecordKind.ROUTED, "r2", "b", "http://vllm-1:8000", affinity_hit=True),
            RequestRecord("wf", RecordKind.COMPLETED, "r2", "b", prompt_tokens=200, cached_tokens=150),
        ]
    )
    assert (result.accepted, result.rejected) == (3, 0)
    status = await http.status("wf")
    assert (status.total_requests, status.affinity_hits, status.cache_hits) == (2, 1, 1)
    assert status.cache_hit_rate == pytest.approx(0.5) and status.affinity_hit_rate == pytest.approx(0.5)
    assert status.cached_token_rate == pytest.approx(0.75)
    assert status.assigned_instance == "http://vllm-1:8000"


async def test_metrics_endpoint(server, http):
    await http.send("wf", "a", "b")
    async with httpx.AsyncClient(base_url=server.http_url) as raw:
        text = (await raw.get("/metrics")).text
        assert (await raw.get("/healthz")).status_code == 200
        assert (await raw.get("/docs")).status_code == 200
    assert "workflow_message_queue_size 1.0" in text and "workflow_active_count 1.0" in text


async def test_drain_delay_reports_not_ready_but_keeps_serving(server_factory):
    """SIGTERM with --drain-delay: /healthz and gRPC health say not ready at once (Envoy's health check moves
    new requests away), while sends and receives are still served until the delay is over."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = await server_factory(drain_delay=1.5)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=5) as c:
        assert (await c.get("/healthz")).status_code == 200
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.2)
        ready = await c.get("/healthz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "shutting_down"
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        sent = await c.post("/v1/workflows/wf-drain/messages", json={
            "source_agent": "a", "target_agent": "b", "message_type": "data", "payload": {"n": 1}})
        assert sent.status_code == 200, sent.text  # still served while draining
        got = await c.get("/v1/workflows/wf-drain/agents/b/messages", params={"timeout": 0})
        assert got.status_code == 200 and len(got.json()["messages"]) == 1
        assert not stopping.done()
        await asyncio.wait_for(stopping, timeout=10)
