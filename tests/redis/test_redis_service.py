"""The service on the Redis store (in process, port 0, system Redis with a prefix per test): long-polls hold
no pooled Redis connection, outlast redis-py's socket timeout, and the process starts with ``--store``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx

from a2a_service import A2AClient
from tests.redis.support import REPO, ServiceProcess


async def test_waiting_long_polls_do_not_starve_sends(make_server):
    # Two pooled Redis connections for 100 waiting long-polls: they wait in the service, not in Redis (with
    # blocking reads, the sends would find no free connection and answer 503).
    server = await make_server(redis_pool_size=2, redis_timeout=1.0)
    waiters = server.store._waiters  # type: ignore[attr-defined]
    limits = httpx.Limits(max_connections=200)
    async with (
        httpx.AsyncClient(base_url=server.http_url, limits=limits, timeout=30) as raw,
        A2AClient(server.http_url) as sender,
    ):
        http = A2AClient(server.http_url, client=raw)
        polls = [asyncio.create_task(http.receive("wf", f"agent{i}", timeout=10.0)) for i in range(100)]
        for _ in range(400):
            if len(waiters) == 100:
                break
            await asyncio.sleep(0.01)
        assert len(waiters) == 100
        started = time.monotonic()
        for i in range(100):
            await sender.send("wf", "boss", f"agent{i}", i)
        sends_took = time.monotonic() - started
        results = await asyncio.wait_for(asyncio.gather(*polls), 10.0)
    assert sorted(r[0].message.json() for r in results) == list(range(100))
    assert sends_took < 5.0, sends_took


async def test_a_long_poll_outlasts_the_redis_socket_timeout(make_server):
    # redis_timeout is also redis-py's socket_timeout: a blocking Redis read of 2.5 s would time out.
    server = await make_server(redis_timeout=0.5)
    async with A2AClient(server.http_url) as http:
        poll = asyncio.create_task(http.receive("wf", "b", timeout=5.0))
        await asyncio.sleep(2.5)
        assert not poll.done()
        sent = await http.send("wf", "a", "b", "late")
        out = await asyncio.wait_for(poll, 2.0)
    assert [d.message.message_id for d in out] == [sent.message_id]


async def test_empty_long_poll_returns_at_its_timeout(make_server):
    server = await make_server(redis_timeout=0.3)
    async with A2AClient(server.http_url) as http:
        started = time.monotonic()
        assert await http.receive("wf", "b", timeout=1.2) == []
        assert 1.1 < time.monotonic() - started < 2.0


async def test_process_with_the_redis_store_and_env_configuration(redis_url, redis_prefix):
    import os

    os.environ["A2A_STORE"], os.environ["A2A_REDIS_PREFIX"] = redis_url, redis_prefix
    try:
        service = ServiceProcess(["--log-level", "warning"])
    finally:
        del os.environ["A2A_STORE"], os.environ["A2A_REDIS_PREFIX"]
    try:
        async with A2AClient(service.http_url) as http, httpx.AsyncClient() as raw:
            assert (await raw.get(f"{service.http_url}/healthz")).json() == {"status": "ok"}
            sent = await http.send("wf", "a", "b", {"via": "env"})
            assert (await http.stats()).messages.sent == 1
            [d] = await http.receive("wf", "b")
            assert d.message.message_id == sent.message_id
    finally:
        service.stop()
    assert service.proc.returncode == 0 and "Traceback" not in service.logs()


def test_a_malformed_store_url_is_refused_at_startup():
    for value in ("redis:/nohost", "memcached://x", ""):
        proc = subprocess.run(
            [sys.executable, "-m", "a2a_service", "--store", value, "--http-port", "0", "--grpc-port", "0"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
        )
        assert proc.returncode != 0, value
        assert "A2A_LISTENING" not in proc.stdout
        assert "store" in proc.stderr and "Traceback" not in proc.stderr
