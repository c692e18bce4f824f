"""Fixtures: the real A2A service (uvicorn + grpc.aio) on port 0, in the test's event loop.

Every service test runs twice: on the memory store and on the Redis store (system Redis, a key prefix of its
own per test; skipped with the reason when Redis is unreachable)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from a2a_service import A2AClient, A2AGrpcClient, A2AServer, Settings
from tests.redis.support import delete_prefix, system_redis_url, unique_prefix

ServerFactory = Callable[..., Awaitable[A2AServer]]

# Small limits so that "full" and "too large" are quick to reach.
TEST_SETTINGS = {"max_message_queue_size": 5, "max_message_size": 64 * 1024, "shutdown_grace": 1.0}


@pytest.fixture(params=["memory", "redis"])
async def server_factory(request: pytest.FixtureRequest) -> AsyncIterator[ServerFactory]:
    servers: list[A2AServer] = []
    store: dict[str, object] = {}
    if request.param == "redis":
        store = {"store": system_redis_url(), "redis_prefix": unique_prefix("svc")}

    async def start(**overrides: object) -> A2AServer:
        base = {"host": "127.0.0.1", "http_port": 0, "grpc_port": 0, **TEST_SETTINGS, **store}
        settings = Settings(**{**base, **overrides})  # type: ignore[arg-type]
        server = A2AServer(settings.validate())
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
    if store:
        delete_prefix(str(store["store"]), str(store["redis_prefix"]))


@pytest.fixture
async def server(server_factory: ServerFactory) -> A2AServer:
    return await server_factory()


@pytest.fixture
async def http(server: A2AServer) -> AsyncIterator[A2AClient]:
    async with A2AClient(server.http_url) as client:
        yield client


@pytest.fixture
async def grpc_client(server: A2AServer) -> AsyncIterator[A2AGrpcClient]:
    async with A2AGrpcClient(server.grpc_target) as client:
        yield client


async def _wait_until_waiting(server: A2AServer, workflow_id: str, agent_id: str, count: int = 1) -> None:
    waiters = server.store._waiters  # type: ignore[attr-defined]  # both stores keep their lines there
    for _ in range(400):
        if len(waiters.get((workflow_id, agent_id), ())) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{count} receiver(s) never waited on {workflow_id}/{agent_id}")


@pytest.fixture
def waiting() -> Callable[..., Awaitable[None]]:
    """``await waiting(server, wf, agent, count=1)``: until that many receivers wait on the queue server-side
    (the store lives in this process)."""
    return _wait_until_waiting
