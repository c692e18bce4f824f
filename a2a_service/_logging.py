"""Structured JSON logs on stderr (stdout carries only the ``A2A_LISTENING`` line).

Payloads are never logged; ids go through ``_validation.sanitize_for_log`` before reaching a record.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar, Token

from pythonjsonlogger.json import JsonFormatter

from .tracecontext import parse_traceparent

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# The ``traceparent`` of the request being served (each request runs in its own task, hence its own context):
# every record logged while serving it carries the caller's trace_id and span_id. Kept raw and parsed only
# when a record is written, so a request that logs nothing pays one context-variable set.
_TRACEPARENT: ContextVar[str | None] = ContextVar("a2a_traceparent", default=None)


def set_trace(traceparent: str | None) -> Token[str | None]:
    return _TRACEPARENT.set(traceparent)


def reset_trace(token: Token[str | None]) -> None:
    _TRACEPARENT.reset(token)


class _TraceFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raw = _TRACEPARENT.get()
        if raw is not None and not hasattr(record, "trace_id"):
            trace = parse_traceparent(raw)
            if trace is not None:
                record.trace_id = trace.trace_id
                record.span_id = trace.span_id
        return True


class _DropColor(logging.Filter):
    """uvicorn attaches an ANSI-coloured copy of its messages; it has no place in JSON logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(_FORMAT, rename_fields={"levelname": "level", "asctime": "time"}))
    handler.addFilter(_DropColor())
    handler.addFilter(_TraceFields())
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
