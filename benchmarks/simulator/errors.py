"""The simulator's errors. Each carries what the HTTP layer needs to answer in OpenAI's error format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["BadRequestError", "EngineStoppedError", "SimulatorError"]


class SimulatorError(Exception):
    """Base class. ``status`` is the HTTP status, ``type`` the OpenAI error type, ``param`` the faulty field."""

    status = 500
    type = "internal_server_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequestError(SimulatorError):
    """The request is malformed or can never be served (e.g. longer than the context window): HTTP 400."""

    status = 400
    type = "invalid_request_error"


class EngineStoppedError(SimulatorError):
    """The engine shut down before the request finished: HTTP 503."""

    status = 503
    type = "service_unavailable"


def bool_field(body: Mapping[str, Any], name: str, default: bool) -> bool:
    """A boolean request field (``default`` when absent or null); a 400 naming it otherwise."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequestError(f"'{name}' must be a boolean", name)
    return value
