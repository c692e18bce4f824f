"""A fixed-response streaming backend for the gateway benchmark: vLLM's SSE shape, no model, little CPU.

``/v1/completions`` with ``"stream": true`` answers ``max_tokens`` completion chunks, one SSE event each as its own
HTTP/1.1 chunk (vLLM's ``serving_completion.py`` shape: ``data: {"id", "object": "text_completion", "choices":
[{"index", "text", "finish_reason"}]}``), the usage chunk when ``stream_options.include_usage`` is set, then
``data: [DONE]``. Between two events it waits ``--itl-ms`` (an engine's inter-token latency), so each event
reaches the gateway as a read of its own, as a real engine's tokens do (without the gap Envoy reads many
events at once and a body observer sees a handful of chunks, not one per token). Anything
else gets one fixed completion JSON. HTTP/1.1 keep-alive on a raw asyncio protocol: the gateway, not this
backend, should be what a benchmark measures.

    python -m benchmarks.stream_backend --port 0 --port-file PATH
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

import orjson

FIXED = orjson.dumps({
    "id": "cmpl-bench", "object": "text_completion", "model": "bench",
    "choices": [{"index": 0, "text": " ok", "finish_reason": "length"}],
    "usage": {"prompt_tokens": 64, "completion_tokens": 1, "total_tokens": 65,
              "prompt_tokens_details": {"cached_tokens": 48}},
})
HEAD_JSON = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n")
HEAD_SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_events(max_tokens: int, prompt_tokens: int, include_usage: bool) -> list[bytes]:
    token = b'data: {"id":"cmpl-bench","object":"text_completion","created":0,"model":"bench","choices":' \
            b'[{"index":0,"text":" ok","logprobs":null,"finish_reason":null}]}\n\n'
    events = [token] * max(0, max_tokens - 1)
    events.append(b'data: {"id":"cmpl-bench","object":"text_completion","created":0,"model":"bench","choices":'
                  b'[{"index":0,"text":" ok","logprobs":null,"finish_reason":"length"}]}\n\n')
    if include_usage:
        events.append(b'data: {"id":"cmpl-bench","object":"text_completion","created":0,"model":"bench",'
                      b'"choices":[],"usage":' + orjson.dumps({
                          "prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                          "total_tokens": prompt_tokens + max_tokens,
                          "prompt_tokens_details": {"cached_tokens": prompt_tokens // 2}}) + b"}\n\n")
    events.append(b"data: [DONE]\n\n")
    return [_chunk(e) for e in events]


ITL_S = 0.001


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            request = orjson.loads(body) if body.startswith(b"{") else {}
            if not (isinstance(request, dict) and request.get("stream")):
                writer.write(HEAD_JSON % len(FIXED) + FIXED)
                await writer.drain()
                continue
            options = request.get("stream_options") or {}
            events = sse_events(int(request.get("max_tokens") or 16), len(body) // 4,
                                bool(options.get("include_usage")))
            writer.write(HEAD_SSE)
            for event in events:
                writer.write(event)
                await writer.drain()
                await asyncio.sleep(ITL_S)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    writer.close()


async def serve(port: int, port_file: Path | None) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", port, limit=1 << 24)
    bound = server.sockets[0].getsockname()[1]
    if port_file is not None:
        port_file.write_text(str(bound))
    async with server:
        await server.serve_forever()


def main() -> None:
    global ITL_S
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, default=None)
    parser.add_argument("--itl-ms", type=float, default=ITL_S * 1e3, help="milliseconds between two events")
    ns = parser.parse_args()
    ITL_S = ns.itl_ms / 1e3
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(ns.port, ns.port_file))


if __name__ == "__main__":
    main()
