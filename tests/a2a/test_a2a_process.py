"""``python -m a2a_service`` as a process: startup line, graceful SIGTERM, refusing a taken port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from a2a_service import A2AClient

REPO = Path(__file__).resolve().parents[2]


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "a2a_service", "--http-port", "0", "--grpc-port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def listening(proc: subprocess.Popen[str]) -> tuple[int, int]:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("A2A_LISTENING "), (line, proc.stderr.read() if proc.poll() is not None else "")
    ports = dict(part.split("=") for part in line.split()[1:])
    return int(ports["http"]), int(ports["grpc"])


@pytest.fixture
def service() -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    proc = spawn("--log-level", "info", "--shutdown-grace", "2")
    try:
        http_port, grpc_port = listening(proc)
        yield proc, http_port, grpc_port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def test_listening_line_and_both_servers_answer(service):
    _, http_port, grpc_port = service
    async with httpx.AsyncClient() as raw:
        assert (await raw.get(f"http://127.0.0.1:{http_port}/healthz")).json() == {"status": "ok"}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_sigterm_wakes_long_polls_and_exits_quickly(service):
    proc, http_port, _ = service
    async with A2AClient(f"http://127.0.0.1:{http_port}") as http:
        poll = asyncio.create_task(http.receive("wf", "b", timeout=30.0))
        await asyncio.sleep(0.3)  # the poll is waiting server-side
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(poll, 5.0) == []  # woken early, with what was available
    while proc.poll() is None and time.monotonic() - started < 10:
        await asyncio.sleep(0.05)
    assert proc.returncode == 0
    assert time.monotonic() - started < 5.0
    logs = proc.stderr.read()
    assert '"message": "stopped"' in logs and "Traceback" not in logs


def test_a_taken_port_is_an_error_not_a_silent_share():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag in ("--grpc-port", "--http-port"):
            args = [flag, str(port)]
            proc = spawn(*args)
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == 1, (flag, out, err)
            assert "A2A_LISTENING" not in out
            assert '"message": "cannot start"' in err and "Traceback" not in err
