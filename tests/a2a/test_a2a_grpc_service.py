"""The gRPC API of a running service (real sockets, port 0): same operations as HTTP, same store."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a2a_service import (
    A2AClient,
    A2AGrpcClient,
    InvalidRequestError,
    MessageTooLargeError,
    NotFoundError,
    QueueFullError,
    RecordKind,
    RequestRecord,
)
from a2a_service.client import _grpc_error
from a2a_service.v1 import a2a_pb2 as pb


async def test_send_receive_round_trip_keeps_numbers_exact(grpc_client):
    sent = await grpc_client.send("wf", "a", "b", {"id": 9007199254740993, "x": 0.1}, message_type="data", ttl=60)
    assert sent.delivered_to == ("b",) and sent.expires_at - sent.created_at == pytest.approx(60)
    [d] = await grpc_client.receive("wf", "b")
    assert d.message.json() == {"id": 9007199254740993, "x": 0.1}
    assert (d.message.message_type, d.delivery_count, d.lease_expires_at) == ("data", 1, None)


async def test_empty_payload_is_an_empty_object(grpc_client):
    await grpc_client.send("wf", "a", "b")
    [d] = await grpc_client.receive("wf", "b")
    assert d.message.json() == {}


async def test_long_poll_returns_promptly(server, grpc_client, waiting):
    poll = asyncio.create_task(grpc_client.receive("wf", "b", timeout=10.0))
    await waiting(server, "wf", "b")
    sent_at = time.monotonic()
    sent = await grpc_client.send("wf", "a", "b", 1)
    out = await asyncio.wait_for(poll, 5.0)
    assert time.monotonic() - sent_at < 3.0
    assert out[0].message.message_id == sent.message_id


async def test_empty_receive_times_out(grpc_client):
    started = time.monotonic()
    assert await grpc_client.receive("wf", "b", timeout=0.3) == []
    assert time.monotonic() - started >= 0.25


async def test_subscribe_streams_messages_in_order(server, grpc_client, waiting):
    received: list[str] = []

    async def consume() -> None:
        async for delivery in grpc_client.subscribe("wf", "sub"):
            received.append(delivery.message.message_id)
            if len(received) == 4:
                return

    consumer = asyncio.create_task(consume())
    await waiting(server, "wf", "sub")
    sent = [(await grpc_client.send("wf", "a", "sub", i)).message_id for i in range(4)]
    await asyncio.wait_for(consumer, 5.0)
    assert received == sent


async def test_subscribe_with_ack_redelivers_unacknowledged(server, grpc_client):
    await grpc_client.send("wf", "a", "sub", "keep")
    seen = []
    async for delivery in grpc_client.subscribe("wf", "sub", ack=True, visibility_timeout=0.3):
        seen.append(delivery)
        if len(seen) == 2:
            break
    assert [d.delivery_count for d in seen] == [1, 2]  # the first lease expired unacknowledged
    assert (await grpc_client.ack("wf", "sub", [seen[1].message.message_id])).acked
    assert await grpc_client.receive("wf", "sub", timeout=0.5) == []


async def test_cancelled_subscription_loses_nothing(server, grpc_client, waiting):
    call = grpc_client.stub.Subscribe(pb.SubscribeRequest(workflow_id="wf", agent_id="sub"))
    await waiting(server, "wf", "sub")
    call.cancel()
    for _ in range(400):
        if not server.store._waiters:
            break
        await asyncio.sleep(0.005)
    sent = await grpc_client.send("wf", "a", "sub")
    assert [d.message.message_id for d in await grpc_client.receive("wf", "sub")] == [sent.message_id]


async def test_full_queue_is_resource_exhausted(grpc_client):
    for i in range(5):
        await grpc_client.send("wf", "a", "b", i)
    with pytest.raises(QueueFullError) as err:
        await grpc_client.send("wf", "a", "b", 5)
    assert err.value.param == "target_agent"
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await grpc_client.stub.SendMessage(pb.SendMessageRequest(workflow_id="wf", source_agent="a", target_agent="b"))
    assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("a2a-error-code", "queue_full") in tuple(raw.value.trailing_metadata())


@pytest.mark.parametrize(
    ("request_", "error", "code", "param"),
    [
        (pb.SendMessageRequest(workflow_id="wf", source_agent="a", target_agent="b", payload=b"x" * (65 * 1024)),
         MessageTooLargeError, "message_too_large", "payload"),
        (pb.SendMessageRequest(workflow_id="wf", source_agent="a", target_agent="b", payload=b"{nope"),
         InvalidRequestError, "invalid_json", "payload"),
        (pb.SendMessageRequest(workflow_id="wf", source_agent="a", target_agent="b", payload=b"[" * 40 + b"]" * 40),
         InvalidRequestError, "json_too_deep", "payload"),
        (pb.SendMessageRequest(workflow_id="w f", source_agent="a", target_agent="b"), InvalidRequestError,
         "invalid_id", "workflow_id"),
        (pb.SendMessageRequest(workflow_id="wf", source_agent="a", target_agent="b", ttl_seconds=0),
         InvalidRequestError, "out_of_range", "ttl"),
    ],
)  # fmt: skip
async def test_invalid_sends_are_invalid_argument_naming_the_field(grpc_client, request_, error, code, param):
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await grpc_client.stub.SendMessage(request_)
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    metadata = dict(raw.value.trailing_metadata())
    assert (metadata["a2a-error-code"], metadata["a2a-error-param"]) == (code, param)
    assert type(_grpc_error(raw.value)) is error  # what A2AGrpcClient raises


async def test_typed_client_errors(grpc_client):
    with pytest.raises(MessageTooLargeError):
        await grpc_client.send("wf", "a", "b", "x" * (65 * 1024))
    with pytest.raises(InvalidRequestError) as err:
        await grpc_client.receive("wf", "b", max_messages=0)
    assert err.value.param == "max_messages"


async def test_status_stats_delete_and_not_found(grpc_client):
    await grpc_client.send("wf", "a", "b")
    await grpc_client.record_requests(
        [
            RequestRecord("wf", RecordKind.ROUTED, "r1", "a", "http://vllm-2:8000", affinity_hit=True),
            RequestRecord("wf", RecordKind.COMPLETED, "r1", "a", prompt_tokens=100, cached_tokens=40),
            RequestRecord("wf", RecordKind.UNSPECIFIED),
        ]
    )
    status = await grpc_client.status("wf")
    assert (status.total_requests, status.cache_hits, status.assigned_instance) == (1, 1, "http://vllm-2:8000")
    assert status.cache_hit_rate == 1.0 and status.cached_token_rate == pytest.approx(0.4)
    assert status.queues["b"].queued == 1
    stats = await grpc_client.stats()
    assert (stats.active_workflows, stats.records_rejected, stats.queued_messages) == (1, 1, 1)
    assert (await grpc_client.delete_workflow("wf")).dropped_messages == 1
    with pytest.raises(NotFoundError):
        await grpc_client.status("wf")
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await grpc_client.stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(workflow_id="wf"))
    assert raw.value.code() == grpc.StatusCode.NOT_FOUND


async def test_status_without_instance_has_no_assigned_instance(grpc_client):
    await grpc_client.send("wf", "a", "b")
    assert (await grpc_client.status("wf")).assigned_instance is None


async def test_grpc_and_http_share_one_store(server, grpc_client):
    async with A2AClient(server.http_url) as http:
        sent = await grpc_client.send("wf", "a", "b", {"via": "grpc"})
        [d] = await http.receive("wf", "b")
        assert d.message.message_id == sent.message_id and d.message.json() == {"via": "grpc"}
        await http.send("wf", "b", "a", {"via": "http"})
        [back] = await grpc_client.receive("wf", "a")
        assert back.message.json() == {"via": "http"}
        assert await http.status("wf") == await grpc_client.status("wf")


async def test_health_service(server):
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "a2a_service.v1.A2AService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_subscribe_stream_ends_cleanly_on_shutdown(server_factory, waiting):
    server = await server_factory()
    async with A2AGrpcClient(server.grpc_target) as client:
        got = []

        async def consume() -> None:
            async for delivery in client.subscribe("wf", "sub"):
                got.append(delivery)

        consumer = asyncio.create_task(consume())
        await waiting(server, "wf", "sub")
        started = time.monotonic()
        await server.stop()
        await asyncio.wait_for(consumer, 5.0)  # the stream ended without an error
        assert got == [] and time.monotonic() - started < 5.0
