"""Structured JSON logs on stderr (stdout carries only the ``A2A_LISTENING`` line).

Payloads are never logged; ids go through ``_validation.sanitize_for_log`` before reaching a record.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class _DropColor(logging.Filter):
    """uvicorn attaches an ANSI-coloured copy of its messages; it has no place in JSON logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(_FORMAT, rename_fields={"levelname": "level", "asctime": "time"}))
    handler.addFilter(_DropColor())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers carry their own handlers; route them through ours. No access log: it would
    # cost more than the request itself at the rates this service is built for.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
