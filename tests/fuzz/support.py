"""Shared pieces of the fuzz suite: budgets, the per-target tally printed at the end, checks of one answer."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

# FUZZ_SCALE=10 multiplies every input budget by ten (a longer manual campaign; see docs/fuzzing.md).
FUZZ_SCALE = max(0.1, float(os.environ.get("FUZZ_SCALE", "1")))

TARGETS = ("metadata parser", "queue logic", "prefix index", "ext_proc via Envoy", "ext_proc gRPC direct",
           "A2A HTTP", "A2A gRPC")


def budget(n: int) -> int:
    return max(1, round(n * FUZZ_SCALE))


@dataclass
class Tally:
    inputs: int = 0
    crashes: int = 0
    failures: list[str] = field(default_factory=list)


TALLY: dict[str, Tally] = {name: Tally() for name in TARGETS}
# Crashes counted before the running test started (set by an autouse fixture): each test answers for its own.
BASELINE: dict[str, int] = dict.fromkeys(TARGETS, 0)


def note(target: str, ok: bool, detail: Callable[[], str]) -> None:
    """Count one input; a failed check counts as a crash (the test asserts none at its end)."""
    tally = TALLY[target]
    tally.inputs += 1
    if not ok:
        tally.crashes += 1
        if len(tally.failures) < 20:
            tally.failures.append(detail())


def assert_no_crashes(target: str) -> None:
    tally = TALLY[target]
    new = tally.crashes - BASELINE[target]
    assert new == 0, f"{new} bad answers from {target}:\n" + "\n".join(tally.failures[-new:])


def is_json_error(body: bytes) -> bool:
    """An error body in our one shape: {"error": {"message": <non-empty>, ...}}."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("error"), dict) and bool(doc["error"].get("message"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def raw_http(port: int, data: bytes, *, read: bool = True, timeout: float = 5.0,
             half_close: bool = False) -> bytes:
    """Write raw bytes to an HTTP port and read whatever comes back until the peer closes or times out."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer (and close) before reading everything: its answer is read below.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        if not read:
            return b""
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def raw_http_stream(port: int, head: bytes, body_size: int, chunk: int = 1 << 20, timeout: float = 20.0) -> bytes:
    """Send ``head`` and ``body_size`` bytes of body in chunks, stopping as soon as the server answers (it may
    refuse a large body early); then read the answer. Stopping early avoids losing the answer to a reset."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        sent = 0
        filler = b"x" * chunk
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < body_size and not select.select([sock], [], [], 0)[0]:
                part = filler[:min(chunk, body_size - sent)]
                sock.sendall(part)
                sent += len(part)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
            if _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip() or 0)
    return False


def parse_status(raw: bytes) -> tuple[int, bytes]:
    """Status code and body of a raw HTTP/1.1 answer (0 when nothing came back)."""
    if not raw.startswith(b"HTTP/"):
        return 0, b""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def completion_ok(client: httpx.Client, path: str = "/v1/completions") -> httpx.Response:
    body: dict[str, object] = {"model": "m", "max_tokens": 4,
                               "workflow_metadata": {"workflow_id": "fuzz-sanity", "agent_id": "checker"}}
    if path.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": "still alive?"}]
    else:
        body["prompt"] = "still alive?"
    return client.post(path, json=body)
