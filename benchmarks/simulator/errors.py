"""The simulator's errors. Each carries what the HTTP layer needs to answer in OpenAI's error format."""

from __future__ import annotations

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
