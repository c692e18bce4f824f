"""Errors of the ext_proc server. Each carries what the client needs to fix its request."""

from __future__ import annotations

import orjson


class BadRequest(Exception):
    """The request cannot be routed as sent; answered with a 400 and an OpenAI-style error body."""

    status = 400

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": "invalid_request_error",
                    "param": self.param,
                    "code": self.code,
                }
            }
        )


class BodyTooLarge(BadRequest):
    """A streamed request body beyond the server's limit (Envoy does not bound FULL_DUPLEX_STREAMED bodies)."""

    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than {limit} bytes", None, "request_too_large")
