"""A small HTTP/1.1 load generator (asyncio, keep-alive), the same for every contender.

Closed loop (:func:`run_load`): each connection sends a request, reads the whole response, and sends the next
one, until the duration is up; the rate is what the server sustains (saturation).

Open loop (:func:`run_open_loop`): requests are due on a fixed schedule (``rate`` per second, evenly spaced) and
are sent over a pool of keep-alive connections, one request in flight per connection. A request's latency is
measured from its *scheduled* time, not from when a connection was free to send it, so queueing behind a slow
server counts (no coordinated omission). A request sent more than ``late_after`` behind its schedule is *late*;
one still unsent when ``max_backlog`` requests already wait, or when the drain time after the schedule is up, is
*dropped* (its latency is unknown; a run with drops did not hold the rate).

Responses carry ``content-length`` (Envoy's and uvicorn's do for non-streaming bodies) or are chunked (streams,
read to their last chunk; no trailers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    duration: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    extproc_cpu_us: float = float("nan")  # the gateway's ext_proc CPU microseconds per request, where measured
    proxy_cpu_us: float = float("nan")  # all of the gateway's processes, CPU microseconds per request
    # Open loop only: requests due by the schedule, sent late (> late_after behind it), never sent.
    scheduled: int = 0
    late: int = 0
    dropped: int = 0
    send_lags: list[float] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.completed / self.duration if self.duration else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def http_request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: bench", f"content-length: {len(body)}"]
    if body:
        lines.append("content-type: application/json")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:  # a stream: read its chunks to the last one
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, host: str,
                    port: int) -> tuple[int | None, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send one request and read its response: ``(status, reader, writer)``; on a timeout or a broken
    connection ``(None, ...)`` over a fresh connection."""
    writer.write(request)
    try:
        return await asyncio.wait_for(_read_response(reader), timeout=10), reader, writer
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        writer.close()
        reader, writer = await asyncio.open_connection(host, port)
        return None, reader, writer


async def run_load(
    host: str, port: int, make_request: Callable[[int], bytes], *, connections: int, duration: float
) -> LoadResult:
    result = LoadResult(duration)
    deadline = time.perf_counter() + duration
    counter = iter(range(1 << 62))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                status, reader, writer = await _exchange(reader, writer, make_request(next(counter)), host, port)
                if status is None:
                    result.errors += 1
                    continue
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    result.duration = time.perf_counter() - started
    return result


async def run_open_loop(
    host: str, port: int, make_request: Callable[[int], bytes], *, rate: float, duration: float, connections: int,
    late_after: float = 0.002, max_backlog: int | None = None, drain: float = 10.0,
) -> LoadResult:
    """``rate`` requests per second for ``duration`` seconds over ``connections`` keep-alive connections;
    latencies from each request's scheduled time. ``max_backlog`` (default ``4 * connections``): due requests
    allowed to wait for a free connection; more are dropped. ``drain``: seconds after the schedule's end to
    finish what is queued or in flight; what is unfinished then is dropped. ``result.send_lags``: how far
    behind its schedule each request was written (the generator's own delay included: asyncio's timers have
    about 1 ms resolution, so at rates above ~1000/s requests leave in small bursts)."""
    result = LoadResult(duration)
    backlog: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    limit = max_backlog if max_backlog is not None else 4 * connections
    perf = time.perf_counter
    opened = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(connections)))

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                index, due = await backlog.get()
                try:
                    lag = perf() - due
                    result.send_lags.append(lag)
                    if lag > late_after:
                        result.late += 1
                    status, reader, writer = await _exchange(reader, writer, make_request(index), host, port)
                    if status is None:
                        result.errors += 1
                        continue
                    result.latencies.append(perf() - due)
                    result.statuses[status] += 1
                finally:
                    backlog.task_done()
        finally:
            writer.close()

    workers = [asyncio.create_task(connection(reader, writer)) for reader, writer in opened]
    interval = 1.0 / rate
    total = int(rate * duration)
    started = perf()
    for index in range(total):
        due = started + index * interval
        delay = due - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        if backlog.qsize() < limit:
            backlog.put_nowait((index, due))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(backlog.join(), timeout=drain)
    result.duration = perf() - started
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    result.scheduled = total
    result.dropped = total - result.completed - result.errors  # refused at a full backlog, or unfinished
    return result
