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


class ModelNotFound(BadRequest):
    """No healthy instance serves the requested model (OpenAI's 404 ``model_not_found``; vLLM answers an unknown
    model with 404 too, vllm/entrypoints/openai/models/serving.py): answered by the gateway, no backend sees it."""

    status = 404

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model[:256]}` does not exist or no healthy instance serves it.", "model",
                         "model_not_found")


class LocalAnswer(BadRequest):
    """Not an error: a request the gateway answers itself with ``status`` and a JSON ``body`` (``GET /v1/models``:
    the fleet's models). It travels the handler's local-reply path, which BadRequest already takes."""

    status = 200

    def __init__(self, body: bytes, code: str) -> None:
        super().__init__("", None, code)
        self.body = body

    def to_json(self) -> bytes:
        return self.body


class PreviousResponseUnavailable(BadRequest):
    """A ``previous_response_id`` whose response lives on an instance that is gone (removed from the fleet) or
    down: only that instance could answer, and vLLM keeps stored responses in its memory. A 404 like vLLM's own
    "not found" but naming the cause; not a 503: Envoy's local-reply mapper rewrites 503 bodies
    (extproc/envoy_config/_filters.py), and a crashed vLLM's store does not survive its restart anyway."""

    status = 404

    def __init__(self, response_id: str, instance: str, *, removed: bool) -> None:
        state = "is no longer part of the fleet" if removed else "is down"
        super().__init__(
            f"previous response '{response_id[:64]}' was stored on instance '{instance}', which {state}; stored "
            f"responses live in the memory of the instance that produced them. "
            + ("Resend the conversation's full input without 'previous_response_id'." if removed else
               "Retry later, or resend the conversation's full input without 'previous_response_id'."),
            "previous_response_id",
            "previous_response_lost" if removed else "previous_response_unavailable",
        )
