"""The open-loop load generator: latency from the scheduled send time (no coordinated omission), late and dropped
requests counted. A tiny asyncio HTTP server on port 0 answers after a delay the test chooses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from benchmarks.loadgen import http_request, run_load, run_open_loop

REQUEST = http_request("POST", "/v1/completions", b'{"prompt": "x"}')


@asynccontextmanager
async def server(delay: float) -> AsyncIterator[int]:
    """HTTP/1.1 keep-alive server answering every request with 200 after ``delay`` seconds, one at a time per
    connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


async def test_open_loop_holds_the_rate() -> None:
    async with server(0.0) as port:
        result = await run_open_loop("127.0.0.1", port, lambda i: REQUEST, rate=200, duration=0.5, connections=4)
    assert result.scheduled == 100
    assert result.completed == 100 and result.dropped == 0 and result.errors == 0
    assert result.statuses == {200: 100}
    assert len(result.send_lags) == 100


async def test_queueing_counts_from_the_schedule() -> None:
    # One connection, 20 ms per response, a request due every 5 ms: the requests queue behind each other. Measured
    # from the send, every latency would be ~20 ms; from the schedule, the later ones waited much longer.
    async with server(0.02) as port:
        result = await run_open_loop("127.0.0.1", port, lambda i: REQUEST, rate=200, duration=0.2, connections=1,
                                     max_backlog=100)
    assert result.completed == result.scheduled == 40 and result.dropped == 0
    assert max(result.latencies) > 0.5  # the last one waited for ~39 others: ~0.8 s
    assert result.late >= 30


async def test_a_full_backlog_drops() -> None:
    async with server(0.05) as port:
        result = await run_open_loop("127.0.0.1", port, lambda i: REQUEST, rate=400, duration=0.25, connections=1,
                                     max_backlog=2)
    assert result.scheduled == 100
    assert result.dropped > 80
    assert result.completed + result.dropped == result.scheduled


async def test_closed_loop_unchanged() -> None:
    async with server(0.0) as port:
        result = await run_load("127.0.0.1", port, lambda i: REQUEST, connections=2, duration=0.2)
    assert result.completed > 10 and result.errors == 0 and result.scheduled == 0
