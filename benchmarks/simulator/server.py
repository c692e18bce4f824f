"""Serving an instance with uvicorn: in-process (:class:`SimServer`) or as the process's main job (:func:`serve`).

Both bind the socket themselves, so ``port=0`` works and the chosen port is known before serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import sys
from collections.abc import Callable

import uvicorn

from .app import SimInstance, create_app
from .config import LISTENING_MARKER, SimConfig

__all__ = ["SimServer", "bind_socket", "serve"]

log = logging.getLogger(__name__)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: the OS picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _uvicorn_config(app: object, config: SimConfig) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_config=None,  # keep the process's (JSON) logging; uvicorn's loggers propagate to the root
        log_level=config.log_level.lower(),
        access_log=config.log_level.lower() == "debug",
        lifespan="on",
        timeout_graceful_shutdown=config.shutdown_grace_s,
        timeout_keep_alive=30,
        backlog=2048,
        server_header=False,
    )


class SimServer:
    """One instance served in the current event loop, without touching signal handlers.

    ``port = await server.start()``; ``await server.stop()``. ``server.sim`` is the :class:`SimInstance`
    (engine, metrics, recorded requests) for direct inspection.
    """

    def __init__(self, config: SimConfig, *, rng: random.Random | None = None) -> None:
        self.config = config.validate()
        self.app = create_app(config, rng=rng)
        self.sim: SimInstance = self.app.state.sim
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> int:
        sock = bind_socket(self.config.host, self.config.port)
        self.port = sock.getsockname()[1]
        server = uvicorn.Server(_uvicorn_config(self.app, self.config))
        self._server = server
        # Server._serve is Server.serve without installing signal handlers (the host process owns those).
        self._task = asyncio.get_running_loop().create_task(server._serve(sockets=[sock]))
        while not server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("simulator server exited during startup")
            await asyncio.sleep(0.005)
        return self.port

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = self._task = None


async def serve(config: SimConfig, *, on_listening: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn handles both: stop accepting, let in-flight requests finish for up
    to ``shutdown_grace_s``, then cut them). ``on_listening(port)`` runs once the server accepts requests;
    by default it prints ``VLLM_SIM_LISTENING port=<port>`` on stdout."""
    config = config.validate()
    sock = bind_socket(config.host, config.port)
    port = sock.getsockname()[1]
    app = create_app(config)
    server = uvicorn.Server(_uvicorn_config(app, config))

    def announce(p: int) -> None:
        sys.stdout.write(f"{LISTENING_MARKER} port={p}\n")
        sys.stdout.flush()

    async def watch() -> None:
        while not server.started:
            await asyncio.sleep(0.005)
        (on_listening or announce)(port)
        log.info(
            "listening",
            extra={"instance": config.name, "host": config.host, "port": port, "model": config.model_name},
        )

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
