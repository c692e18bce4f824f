"""One service process: the HTTP app (uvicorn) and the gRPC server on one store, in the running loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from types import TracebackType
from typing import TypedDict

import uvicorn

from ._stores._memory import MemoryStore
from ._stores._protocol import Store
from ._transports._grpc_server import GrpcServer
from ._transports._http import create_app
from .config import Settings
from .errors import A2AError

log = logging.getLogger("a2a_service.server")


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the process owner decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. ``proto`` is set explicitly: asyncio only enables TCP_NODELAY on accepted
    sockets whose ``proto`` is IPPROTO_TCP, and ``socket.create_server`` leaves it 0 (Nagle + delayed ACK
    then add ~40 ms to responses written in two parts; uvloop sets the option itself)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _SSLOptions(TypedDict, total=False):
    ssl_certfile: str
    ssl_keyfile: str
    ssl_ca_certs: str
    ssl_cert_reqs: int


def _ssl_options(settings: Settings) -> _SSLOptions:
    """uvicorn's TLS settings: https with the service certificate; with a client CA, mTLS (a client without a
    certificate signed by it fails the handshake)."""
    if not settings.tls_cert_file:
        return {}
    options: _SSLOptions = {"ssl_certfile": settings.tls_cert_file, "ssl_keyfile": settings.tls_key_file}
    if settings.tls_client_ca_file:
        options["ssl_ca_certs"] = settings.tls_client_ca_file
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def make_store(settings: Settings) -> Store:
    """The store ``settings.store`` names: ``memory``, or a Redis URL (redis-py is imported only then)."""
    if settings.store == "memory":
        return MemoryStore(settings)
    try:
        from ._stores._redis import RedisStore
    except ImportError as exc:
        raise ImportError("the Redis store needs redis-py: pip install 'envoy-workflow-router[redis]'") from exc
    return RedisStore(settings)


HEALTH_CHECK_INTERVAL = 1.0  # seconds between readiness checks of a shared store (gRPC health status)


class A2AServer:
    """Start with ``await start()`` (or ``async with``); ports 0 are resolved in ``http_port``/``grpc_port``.

    ``stop()``: stop accepting, wake every long-poll with what is available, let in-flight calls finish for
    up to ``settings.shutdown_grace`` seconds, then cancel the rest.
    """

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store: Store = store if store is not None else make_store(settings)
        self.app = create_app(self.store, settings)
        self._grpc = GrpcServer(self.store, settings)
        self._uvicorn: _EmbeddedUvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        self._health_watch: asyncio.Task[None] | None = None
        self.http_port = 0
        self.grpc_port = 0
        self._stopped = False

    async def start(self) -> None:
        s = self.settings
        sock = _listen(s.host, s.http_port)
        try:
            self.grpc_port = await self._grpc.start()
        except BaseException:
            sock.close()
            raise
        self.http_port = sock.getsockname()[1]
        await self.store.start()
        config = uvicorn.Config(
            self.app,
            http="httptools",
            ws="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=max(1, round(s.shutdown_grace)),
            **_ssl_options(s),
        )
        self._uvicorn = _EmbeddedUvicorn(config)
        self._serving = asyncio.create_task(self._uvicorn.serve(sockets=[sock]), name="a2a-http")
        while not self._uvicorn.started:
            if self._serving.done():
                await self._grpc.stop(0)
                self._serving.result()  # raises what went wrong
                raise RuntimeError("HTTP server exited during startup")
            await asyncio.sleep(0.005)
        if not isinstance(self.store, MemoryStore):
            self._health_watch = asyncio.create_task(self._watch_health(), name="a2a-health")
        log.info("listening", extra={"http_port": self.http_port, "grpc_port": self.grpc_port, "host": s.host})

    async def _watch_health(self) -> None:
        """gRPC health follows the shared store: NOT_SERVING while it cannot be reached (HTTP /healthz asks
        the store on each probe)."""
        serving = True
        while True:
            await asyncio.sleep(HEALTH_CHECK_INTERVAL)
            try:
                await self.store.ping()
                ok = True
            except A2AError:
                ok = False
            if ok != serving:
                serving = ok
                await self._grpc.set_serving(ok)

    @property
    def http_url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"http://{host}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{host}:{self.grpc_port}"

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.shutdown_grace
        if self._health_watch is not None:
            self._health_watch.cancel()  # nothing may report SERVING again
        if self.settings.drain_delay > 0:
            self.app.draining = True
            await self._grpc.set_serving(False)
            log.info("draining", extra={"drain_delay_s": self.settings.drain_delay})
            await asyncio.sleep(self.settings.drain_delay)
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        grpc_stopping = asyncio.create_task(self._grpc.stop(grace))
        await self.store.close()  # long-polls return now, with whatever is available
        waits: list[asyncio.Future[None]] = [grpc_stopping]
        if self._serving is not None:
            waits.append(self._serving)
        done, pending = await asyncio.wait(waits, timeout=grace + 2.0)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("server stopped with an error", exc_info=task.exception())
        await self.store.aclose()
        log.info("stopped")

    async def __aenter__(self) -> A2AServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
