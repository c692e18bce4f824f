"""Structured (JSON lines) logging for the ext_proc server."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


class _DropColor(logging.Filter):
    """uvicorn (the simulator's HTTP server) attaches an ANSI-coloured copy of its messages: escape codes have
    no place in JSON logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def configure(level: str, name: str = "extproc") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level"})
    )
    handler.addFilter(_DropColor())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger(name).setLevel(level.upper())
    # httpx logs every request at info: the backend poller alone would write 20 lines a second per instance.
    if root.level > logging.DEBUG:
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
