"""Redis down or slow: the A2A service answers 503 ``store_unavailable`` quickly, reports not ready, and
recovers by itself when Redis is back. A private ``redis-server`` (never the system one) is stopped, paused
and restarted on the same port under in-process services (port 0)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a2a_service import A2AClient, A2AError, A2AGrpcClient, A2AServer, Settings, StoreUnavailableError
from a2a_service.v1 import a2a_pb2 as pb
from tests.redis.support import PrivateRedis

REDIS_TIMEOUT = 0.5
# A call while Redis is down must be answered within this (refused connection: at once; no answer: the
# Redis timeout), with room for a loaded test machine.
BOUND = REDIS_TIMEOUT + 1.0

ServerFactory = Callable[[], Awaitable[A2AServer]]


@pytest.fixture
async def make_server(private_redis: PrivateRedis) -> AsyncIterator[ServerFactory]:
    servers: list[A2AServer] = []

    async def make() -> A2AServer:
        settings = Settings(
            host="127.0.0.1", http_port=0, grpc_port=0, store=private_redis.url, redis_prefix="a2a:",
            redis_timeout=REDIS_TIMEOUT, cleanup_interval=0.2, shutdown_grace=1.0,
        ).validate()  # fmt: skip
        server = A2AServer(settings)
        await server.start()
        servers.append(server)
        return server

    yield make
    private_redis.resume()
    for server in servers:
        await server.stop()


async def grpc_health(server: A2AServer) -> int:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return reply.status


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, "condition not reached in time"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def assert_store_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("store_unavailable", "unavailable_error")
    assert "Redis" in error["message"]
    assert response.headers.get("retry-after") == "1"
    assert elapsed < BOUND, elapsed


async def test_redis_stopped_under_load_answers_503_quickly_then_recovers(make_server, private_redis):
    server = await make_server()
    outcomes: list[tuple[float, str, float]] = []  # (when, "ok" or error code, seconds the call took)
    stop = asyncio.Event()

    async def load() -> None:
        async with A2AClient(server.http_url, timeout=10) as http:
            while not stop.is_set():
                for op in ("send", "receive"):
                    started = time.monotonic()
                    try:
                        if op == "send":
                            await http.send("wf", "a", "b", {"at": started})
                        else:
                            await http.receive("wf", "b", timeout=0, max_messages=10)
                        outcomes.append((started, "ok", time.monotonic() - started))
                    except A2AError as exc:
                        outcomes.append((started, exc.code, time.monotonic() - started))
                await asyncio.sleep(0.005)

    loader = asyncio.create_task(load())
    await asyncio.sleep(0.5)
    stopped_at = time.monotonic()
    private_redis.stop()
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as raw:
        await asyncio.sleep(0.3)
        for method, path, body in (
            ("POST", "/v1/workflows/wf/messages", {"source_agent": "a", "target_agent": "b"}),
            ("GET", "/v1/workflows/wf/agents/b/messages?timeout=0", None),
            ("GET", "/v1/workflows/wf/agents/b/messages?timeout=3", None),  # a long-poll too
            ("POST", "/v1/workflows/wf/agents/b/messages/ack", {"message_ids": ["x"]}),
            ("GET", "/v1/workflows/wf/status", None),
            ("GET", "/v1/workflows/stats", None),
            ("DELETE", "/v1/workflows/wf", None),
            ("POST", "/v1/workflows/records", {"records": [{"kind": "ROUTED", "workflow_id": "wf"}]}),
            ("GET", "/healthz", None),
        ):
            started = time.monotonic()
            response = await raw.request(method, path, json=body)
            assert_store_unavailable(response, time.monotonic() - started)
    async with A2AGrpcClient(server.grpc_target) as grpc_client:
        request = pb.SendMessageRequest(workflow_id="wf", source_agent="a", target_agent="b")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await grpc_client.stub.SendMessage(request)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ("a2a-error-code", "store_unavailable") in tuple(err.value.trailing_metadata())
        with pytest.raises(StoreUnavailableError):  # what the client library raises
            await grpc_client.receive("wf", "b", timeout=2.0)

    async def not_serving() -> bool:
        return await grpc_health(server) == health_pb2.HealthCheckResponse.NOT_SERVING

    await eventually(not_serving, 3.0)

    restarting_at = time.monotonic()
    private_redis.start()  # same port, empty (nothing was persisted)
    restarted_at = time.monotonic()
    async with A2AClient(server.http_url) as http:

        async def sends() -> bool:
            try:
                await http.send("wf2", "a", "b", {"back": True})
            except StoreUnavailableError:
                return False
            return True

        recovery = await eventually(sends, 5.0)
        assert [d.message.json() for d in await http.receive("wf2", "b")] == [{"back": True}]
        assert await http.healthy()

    async def serving() -> bool:
        return await grpc_health(server) == health_pb2.HealthCheckResponse.SERVING

    await eventually(serving, 3.0)
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(loader, 10)

    during = [o for o in outcomes if stopped_at + 0.05 < o[0] and o[0] + o[2] < restarting_at]
    after = [o for o in outcomes if o[0] > restarted_at + recovery + 0.1]
    assert any(code == "ok" for _, code, _ in outcomes if _ < stopped_at)
    assert during and all(code == "store_unavailable" for _, code, _ in during), {c for _, c, _ in during}
    assert max(took for _, _, took in during) < BOUND
    assert after and all(code == "ok" for _, code, _ in after)


async def test_long_polls_waiting_when_redis_dies_end_by_their_timeout(make_server, private_redis):
    server = await make_server()
    async with A2AClient(server.http_url) as http, A2AGrpcClient(server.grpc_target) as grpc_client:
        started = time.monotonic()
        polls = [
            asyncio.create_task(http.receive("wf", "b", timeout=2.0)),
            asyncio.create_task(http.receive("wf", "c", timeout=2.0, ack=True)),
            asyncio.create_task(grpc_client.receive("wf", "d", timeout=2.0)),
        ]
        await asyncio.sleep(0.3)  # all three wait in the service
        private_redis.stop()
        results = await asyncio.wait_for(asyncio.gather(*polls, return_exceptions=True), 2.0 + BOUND)
        assert time.monotonic() - started < 2.0 + BOUND
        for result in results:  # an empty answer at the timeout, or 503: never a hang
            assert result == [] or isinstance(result, StoreUnavailableError), result


async def test_a_redis_that_stops_answering_gives_503_within_the_timeout(make_server, private_redis):
    server = await make_server()
    async with A2AClient(server.http_url) as http, httpx.AsyncClient(base_url=server.http_url) as raw:
        await http.send("wf", "a", "b", 1)
        private_redis.pause()  # SIGSTOP: connections stay open, nothing answers
        try:
            for method, path, body in (
                ("POST", "/v1/workflows/wf/messages", {"source_agent": "a", "target_agent": "b"}),
                ("GET", "/v1/workflows/wf/agents/b/messages?timeout=0", None),
                ("GET", "/v1/workflows/wf/status", None),
                ("GET", "/healthz", None),
            ):
                started = time.monotonic()
                response = await raw.request(method, path, json=body)
                assert_store_unavailable(response, time.monotonic() - started)
        finally:
            private_redis.resume()

        async def answers() -> bool:
            try:
                await http.status("wf")
            except StoreUnavailableError:
                return False
            return True

        await eventually(answers, 5.0)
        assert len(await http.receive("wf", "b", max_messages=10)) >= 1


async def test_wake_ups_between_replicas_work_again_after_a_redis_restart(make_server, private_redis):
    a, b = await make_server(), await make_server()
    private_redis.stop()
    await asyncio.sleep(0.3)
    private_redis.start()
    for server in (a, b):  # the wake-up subscriptions come back by themselves
        await eventually(lambda s=server: _subscribed(s), 5.0)
    async with A2AClient(a.http_url) as via_a, A2AClient(b.http_url) as via_b:
        await eventually(via_b.healthy, 5.0)
        poll = asyncio.create_task(via_b.receive("wf", "b", timeout=10.0))
        await asyncio.sleep(0.3)
        sent_at = time.monotonic()
        sent = await via_a.send("wf", "a", "b", "after the restart")
        out = await asyncio.wait_for(poll, 5.0)
        assert time.monotonic() - sent_at < 1.0
        assert [d.message.message_id for d in out] == [sent.message_id]


async def _subscribed(server: A2AServer) -> bool:
    return server.store._subscribed.is_set()  # type: ignore[attr-defined]


async def test_the_service_starts_without_redis_and_becomes_ready_when_it_appears(make_server, private_redis):
    private_redis.stop()
    started = time.monotonic()
    server = await make_server()  # no Redis yet: starts anyway (Kubernetes may start it before Redis)
    assert time.monotonic() - started < 5.0
    async with A2AClient(server.http_url) as http:
        assert not await http.healthy()
        with pytest.raises(StoreUnavailableError):
            await http.send("wf", "a", "b")
        private_redis.start()
        await eventually(http.healthy, 5.0)
        await eventually(lambda: _subscribed(server), 5.0)
        await http.send("wf", "a", "b", "hello")
        assert [d.message.json() for d in await http.receive("wf", "b")] == ["hello"]
