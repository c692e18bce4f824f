"""Helpers for tests that need Redis (importable from any test module; the fixtures are in ``conftest.py``).

- The system Redis (``A2A_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``) is shared: every test uses
  its own key prefix and deletes its keys afterwards. It is never stopped.
- ``PrivateRedis`` is a ``redis-server`` subprocess on a free port, with nothing on disk, for tests that stop,
  pause or restart Redis.

Without a reachable system Redis the tests that need it are skipped with a message saying so; with
``A2A_TEST_REQUIRE_REDIS=1`` (CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_REDIS_URL = os.environ.get("A2A_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@cache
def _system_redis_error() -> str | None:
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install -e '.[dev]')"
    try:
        client = redis.Redis.from_url(SYSTEM_REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def system_redis_url() -> str:
    """The shared Redis URL, or skip (fail with A2A_TEST_REQUIRE_REDIS=1) when it cannot be reached."""
    error = _system_redis_error()
    if error is not None:
        message = f"Redis at {SYSTEM_REDIS_URL} is unreachable ({error}); start redis-server or set A2A_TEST_REDIS_URL"
        if os.environ.get("A2A_TEST_REQUIRE_REDIS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return SYSTEM_REDIS_URL


def unique_prefix(tag: str = "t") -> str:
    return f"a2a-test:{tag}:{uuid.uuid4().hex[:10]}:"


def delete_prefix(url: str, prefix: str) -> int:
    """Remove every key under ``prefix`` (tests clean up after themselves on the shared Redis)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5.0)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.unlink(*keys[i : i + 500])
        return len(keys)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A ``redis-server`` of this test only (``--save "" --appendonly no``): may be stopped and restarted on
    the same port, or paused (SIGSTOP) to look like a Redis that stopped answering."""

    def __init__(self, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not on PATH")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} (port {self.port} taken?)")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        """Kill it (SIGKILL: an abrupt outage; nothing is kept, --save "")."""
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)


class ServiceProcess:
    """``python -m a2a_service`` on free ports (a real replica that can be SIGKILLed)."""

    def __init__(self, args: Sequence[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed with the process object)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "a2a_service", "--http-port", "0", "--grpc-port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("A2A_LISTENING "):
            self.kill()
            raise RuntimeError(f"service did not start: {line!r}\n{self.logs()[-2000:]}")
        ports = dict(part.split("=") for part in line.split()[1:])
        self.http_port, self.grpc_port = int(ports["http"]), int(ports["grpc"])
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"

    def logs(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
