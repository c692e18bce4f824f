"""Fixtures for the Redis store tests: the system Redis with a unique key prefix per test, a private
``redis-server`` for tests that stop it, and Redis-backed stores / servers built on them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from a2a_service import A2AServer, RedisStore, Settings
from tests.redis.support import PrivateRedis, delete_prefix, system_redis_url, unique_prefix

StoreFactory = Callable[..., Awaitable[RedisStore]]
ServerFactory = Callable[..., Awaitable[A2AServer]]


@pytest.fixture
def redis_url() -> str:
    """The system Redis (skips the test, with the reason, when it is unreachable)."""
    return system_redis_url()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test only; its keys are deleted afterwards."""
    prefix = unique_prefix()
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of this test (free port, nothing on disk), started; stopped at the end."""
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def redis_settings(url: str, prefix: str, **overrides: object) -> Settings:
    base: dict[str, object] = {"store": url, "redis_prefix": prefix, "cleanup_interval": 60.0}
    return Settings(**{**base, **overrides}).validate()  # type: ignore[arg-type]


@pytest.fixture
async def make_store(redis_url: str, redis_prefix: str) -> AsyncIterator[StoreFactory]:
    """``await make_store(**settings)``: a started RedisStore on the test's prefix (several = replicas)."""
    stores: list[RedisStore] = []

    async def make(**overrides: object) -> RedisStore:
        store = RedisStore(redis_settings(redis_url, redis_prefix, **overrides))
        await store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()
        await store.aclose()


@pytest.fixture
async def make_server(redis_url: str, redis_prefix: str) -> AsyncIterator[ServerFactory]:
    """``await make_server(**settings)``: an in-process A2A service (port 0) on the test's Redis prefix."""
    servers: list[A2AServer] = []

    async def make(**overrides: object) -> A2AServer:
        base = {"host": "127.0.0.1", "http_port": 0, "grpc_port": 0, "shutdown_grace": 1.0}
        server = A2AServer(redis_settings(redis_url, redis_prefix, **{**base, **overrides}))
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()
