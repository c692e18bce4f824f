"""``workflow-a2a`` / ``python -m a2a_service``: run the HTTP and gRPC servers until SIGTERM/SIGINT.

Once both servers accept connections, one line goes to stdout (flushed) for parent processes:
``A2A_LISTENING http=<port> grpc=<port>``. Logs go to stderr as JSON.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from ._logging import configure_logging
from .config import Settings

log = logging.getLogger("a2a_service")


async def serve(settings: Settings) -> int:
    from ._server import A2AServer

    try:
        server = A2AServer(settings)
    except (ImportError, ValueError) as exc:  # redis-py missing for --store redis://, or a malformed URL
        log.error("cannot start", extra={"error": str(exc)})
        return 1
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 1
    print(f"A2A_LISTENING http={server.http_port} grpc={server.grpc_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.from_args(argv)
    configure_logging(settings.log_level)
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it; plain asyncio works too
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
