"""``--auth jwt`` on a running service (real HTTP and gRPC, memory and Redis stores): 401/403 with JSON errors,
the same rules on the fast path, through FastAPI and over gRPC, tokens valid on every replica, never logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import httpx
import jwt
import pytest

from a2a_service import (
    A2AClient,
    A2AGrpcClient,
    A2AServer,
    InvalidRequestError,
    PermissionDeniedError,
    RecordKind,
    RequestRecord,
    Settings,
    UnauthenticatedError,
)
from a2a_service.v1 import a2a_pb2 as pb
from a2a_service.v1 import a2a_pb2_grpc as pb_grpc
from tests.a2a.conftest import TEST_SETTINGS
from tests.redis.support import delete_prefix, system_redis_url, unique_prefix

SECRET = "test-secret-" + "k" * 32
ADMIN = "admin-token-" + "z" * 24
AUTH = {"auth": "jwt", "auth_secret": SECRET, "admin_token": ADMIN}


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[A2AServer]]]:
    """Servers on the memory store unless told otherwise (the rules do not depend on the store; the Redis
    store is exercised by the cross-replica test)."""
    servers: list[A2AServer] = []

    async def start(**overrides: object) -> A2AServer:
        base = {"host": "127.0.0.1", "http_port": 0, "grpc_port": 0, **TEST_SETTINGS, **AUTH}
        server = A2AServer(Settings(**{**base, **overrides}).validate())  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture(params=["fast-path", "fastapi"])
async def secured(request: pytest.FixtureRequest, start) -> A2AServer:
    server = await start()
    if request.param == "fastapi":
        server.app.hot = None  # every route through FastAPI: the same rules must hold there
    return server


async def tokens(server: A2AServer, *pairs: tuple[str, str]) -> list[str]:
    async with A2AClient(server.http_url, token=ADMIN) as admin:
        return [(await admin.issue_token(wf, agent, ttl=120))[0] for wf, agent in pairs]


async def test_missing_invalid_and_expired_tokens_get_401_json_with_a_challenge(secured):
    url = f"{secured.http_url}/v1/workflows/wf/agents/b/messages?timeout=0"
    expired = jwt.encode({"workflow_id": "wf", "agent_id": "b", "aud": "a2a-service", "exp": 1}, SECRET)
    cases = [({}, "missing_token"), ({"authorization": "Bearer not.a.jwt"}, "invalid_token"),
             ({"authorization": f"Bearer {expired}"}, "token_expired"),
             ({"authorization": "Basic eDp5"}, "missing_token")]
    async with httpx.AsyncClient() as raw:
        for headers, code in cases:
            r = await raw.get(url, headers=headers)
            assert r.status_code == 401, r.text
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["error"]["code"] == code and r.json()["error"]["type"] == "authentication_error"
            assert expired not in r.text
        send = await raw.post(f"{secured.http_url}/v1/workflows/wf/messages",
                              json={"source_agent": "a", "target_agent": "b", "payload": {}})
        assert send.status_code == 401 and send.headers["www-authenticate"] == 'Bearer realm="a2a"'
    assert (await A2AClient(secured.http_url).healthy())  # health stays open to probes


async def test_agent_tokens_cover_their_own_workflow_and_queue_only(secured):
    planner, coder, other = await tokens(secured, ("wf", "planner"), ("wf", "coder"), ("wf-other", "coder"))
    async with (A2AClient(secured.http_url, token=planner) as p, A2AClient(secured.http_url, token=coder) as c,
                A2AClient(secured.http_url, token=other) as o):
        sent = await p.send("wf", "planner", "coder", {"task": 1})
        assert sent.delivered_to == ("coder",)
        with pytest.raises(PermissionDeniedError) as exc:
            await p.send("wf", "coder", "planner", {})  # impersonating another agent
        assert (exc.value.code, exc.value.param) == ("wrong_agent", "source_agent")
        with pytest.raises(PermissionDeniedError) as exc:
            await p.receive("wf", "coder")  # reading another agent's queue
        assert exc.value.code == "wrong_agent"
        with pytest.raises(PermissionDeniedError) as exc:
            await o.receive("wf", "coder")  # same agent name, other workflow
        assert exc.value.code == "wrong_workflow"
        with pytest.raises(PermissionDeniedError):
            await o.status("wf")
        [delivery] = await c.receive("wf", "coder", ack=True)
        assert (await c.ack("wf", "coder", [delivery.message.message_id])).acked
        assert (await c.status("wf")).workflow_id == "wf"
        for call in (c.stats(), c.delete_workflow("wf"), c.issue_token("wf", "coder")):
            with pytest.raises(PermissionDeniedError) as exc:
                await call
            assert exc.value.code == "admin_required"
        with pytest.raises(PermissionDeniedError):
            await c.record_requests([RequestRecord("wf", RecordKind.ROUTED, instance="vllm-1")])
    async with A2AClient(secured.http_url, token=ADMIN) as admin:
        assert (await admin.stats()).active_workflows >= 1
        assert (await admin.record_requests([RequestRecord("wf", RecordKind.ROUTED, instance="vllm-1")])).accepted == 1
        assert (await admin.delete_workflow("wf")).workflow_id == "wf"


async def test_grpc_applies_the_same_rules(start):
    server = await start()
    planner, router = (await tokens(server, ("wf", "planner")))[0], jwt.encode(
        {"role": "router", "aud": "a2a-service", "exp": 2**31}, SECRET)
    async with A2AGrpcClient(server.grpc_target) as anonymous:
        with pytest.raises(UnauthenticatedError) as exc:
            await anonymous.send("wf", "planner", "coder", {})
        assert exc.value.code == "missing_token"
    async with A2AGrpcClient(server.grpc_target, token=planner) as p:
        assert (await p.send("wf", "planner", "coder", {"x": 1})).delivered_to == ("coder",)
        with pytest.raises(PermissionDeniedError):
            await p.send("wf", "coder", "planner", {})
        with pytest.raises(PermissionDeniedError):
            await p.stats()
        with pytest.raises(PermissionDeniedError):
            async for _ in p.subscribe("wf", "coder"):
                break
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.A2AServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as rpc:
            await stub.GetStats(pb.GetStatsRequest(), metadata=(("authorization", "Bearer nope"),))
        assert rpc.value.code() == grpc.StatusCode.UNAUTHENTICATED and "nope" not in (rpc.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as rpc:
            await stub.GetStats(pb.GetStatsRequest(), metadata=(("authorization", f"Bearer {planner}"),))
        assert rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        records = pb.RecordRequestsRequest(records=[pb.RequestRecord(workflow_id="wf", kind=pb.ROUTED, instance="i")])
        reply = await stub.RecordRequests(records, metadata=(("authorization", f"Bearer {router}"),))
        assert reply.accepted == 1
        with pytest.raises(grpc.aio.AioRpcError) as rpc:  # a router token records, nothing else
            await stub.GetWorkflowStatus(pb.GetWorkflowStatusRequest(workflow_id="wf"),
                                         metadata=(("authorization", f"Bearer {router}"),))
        assert rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_token_issued_by_one_replica_is_accepted_by_another(start):
    url, prefix = system_redis_url(), unique_prefix("auth")
    try:
        first = await start(store=url, redis_prefix=prefix)
        second = await start(store=url, redis_prefix=prefix)
        [token] = await tokens(first, ("wf-r", "agent-1"))
        async with (A2AClient(second.http_url, token=token) as on_second,
                    A2AClient(first.http_url, token=token) as on_first):
            await on_second.send("wf-r", "agent-1", "agent-1", {"self": True})
            assert len(await on_first.receive("wf-r", "agent-1", timeout=2)) == 1  # shared queue, same rules
            with pytest.raises(PermissionDeniedError):
                await on_second.receive("wf-r", "agent-2")
    finally:
        delete_prefix(url, prefix)


async def test_openapi_declares_the_bearer_scheme_and_token_route(start):
    secured = await start()
    async with httpx.AsyncClient() as raw:
        spec = (await raw.get(f"{secured.http_url}/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"]}
    send = spec["paths"]["/v1/workflows/{workflow_id}/messages"]["post"]
    assert send["security"] == [{"bearerAuth": []}] and "401" in send["responses"]
    assert "post" in spec["paths"]["/v1/workflows/{workflow_id}/agents/{agent_id}/token"]


async def test_auth_off_needs_no_token_and_refuses_to_issue(start):
    server = await start(auth="none")
    async with A2AClient(server.http_url) as anyone:
        await anyone.send("wf", "a", "b", {})
        assert (await anyone.stats()).active_workflows >= 1
        with pytest.raises(InvalidRequestError) as exc:
            await anyone.issue_token("wf", "a")
        assert exc.value.code == "auth_disabled"


async def test_tokens_never_reach_the_logs(start, caplog):
    secured = await start()
    caplog.set_level(logging.DEBUG)
    [token] = await tokens(secured, ("wf-log", "a"))
    async with A2AClient(secured.http_url, token=token) as agent:
        await agent.send("wf-log", "a", "b", {})
        with pytest.raises(PermissionDeniedError):
            await agent.receive("wf-log", "b")
    async with httpx.AsyncClient() as raw:
        await raw.get(f"{secured.http_url}/v1/workflows/stats", headers={"authorization": f"Bearer {token}x"})
    await asyncio.sleep(0)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert caplog.records and token not in text and ADMIN not in text and SECRET not in text
