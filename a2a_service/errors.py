"""Errors of the A2A service and client.

Every error carries what each transport needs to answer: the HTTP status, the gRPC status code name, the
error ``type`` of the JSON body, a machine ``code`` and the ``param`` (field) at fault. The HTTP and gRPC
adapters translate them at one boundary each; the clients turn answers back into the same classes.

::

    A2AError                      500  INTERNAL            internal_error
    ├── InvalidRequestError       422  INVALID_ARGUMENT    invalid_request_error
    │   ├── MalformedJSONError    400                      (code malformed_json)
    │   └── MessageTooLargeError  413                      (code message_too_large)
    ├── UnauthenticatedError      401  UNAUTHENTICATED     authentication_error  (code missing_token,
    │                                                          invalid_token, token_expired)
    ├── PermissionDeniedError     403  PERMISSION_DENIED   permission_error      (code wrong_workflow,
    │                                                          wrong_agent, admin_required)
    ├── NotFoundError             404  NOT_FOUND           not_found_error
    ├── ResourceExhaustedError    429  RESOURCE_EXHAUSTED  resource_exhausted_error
    │   ├── QueueFullError                                 (code queue_full)
    │   ├── TooManyWorkflowsError                          (code too_many_workflows)
    │   └── TooManyAgentsError                             (code too_many_agents)
    └── UnavailableError          503  UNAVAILABLE         unavailable_error  (code shutting_down)
        └── StoreUnavailableError                          (code store_unavailable)
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "A2AError",
    "InvalidRequestError",
    "MalformedJSONError",
    "MessageTooLargeError",
    "NotFoundError",
    "PermissionDeniedError",
    "QueueFullError",
    "ResourceExhaustedError",
    "StoreUnavailableError",
    "TooManyAgentsError",
    "TooManyWorkflowsError",
    "UnauthenticatedError",
    "UnavailableError",
    "error_from_wire",
]


class A2AError(Exception):
    """Base class. ``str(err)`` is the human message."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[str] = "INTERNAL"  # name of a grpc.StatusCode member (no grpc import here)
    type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def to_json(self, http_status: int | None = None) -> dict[str, Any]:
        """The body every HTTP error uses: ``{"detail": ..., "error": {message, type, param, code}}``.

        ``detail`` is what FastAPI clients of the upstream API read (docs/compatibility.md): the message, or for a
        422 FastAPI's validation list ``[{"type", "loc", "msg"}]``. ``error`` carries the fields our clients use.
        ``http_status``: the status actually answered, when it is not the class's own."""
        detail: Any = self.message
        if (http_status or self.http_status) == 422:
            detail = [{"type": self.code, "loc": _location(self.param), "msg": self.message}]
        return {
            "detail": detail,
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code},
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, param={self.param!r}, code={self.code!r})"


class InvalidRequestError(A2AError):
    """The request is well-formed but a field is invalid (wrong type, out of range, bad id...)."""

    http_status = 422
    grpc_code = "INVALID_ARGUMENT"
    type = "invalid_request_error"
    default_code = "invalid_value"


class MalformedJSONError(InvalidRequestError):
    """The body is not JSON, or not a JSON object."""

    http_status = 400
    default_code = "malformed_json"


class MessageTooLargeError(InvalidRequestError):
    """The payload (or the whole body) exceeds ``--max-message-size``."""

    http_status = 413
    default_code = "message_too_large"


class UnauthenticatedError(A2AError):
    """No bearer token, or one that does not verify (bad signature, expired, wrong audience, missing claims).
    The message names the problem, never the token."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"
    type = "authentication_error"
    default_code = "invalid_token"


class PermissionDeniedError(A2AError):
    """A valid token that does not cover this call (another workflow or agent, or an admin operation)."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"
    type = "permission_error"
    default_code = "forbidden"


class NotFoundError(A2AError):
    http_status = 404
    grpc_code = "NOT_FOUND"
    type = "not_found_error"
    default_code = "not_found"


class ResourceExhaustedError(A2AError):
    """A capacity limit was reached; retry later (after receivers drained, or workflows expired)."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"
    type = "resource_exhausted_error"
    default_code = "resource_exhausted"


class QueueFullError(ResourceExhaustedError):
    default_code = "queue_full"


class TooManyWorkflowsError(ResourceExhaustedError):
    default_code = "too_many_workflows"


class TooManyAgentsError(ResourceExhaustedError):
    default_code = "too_many_agents"


class UnavailableError(A2AError):
    """The service is shutting down."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    type = "unavailable_error"
    default_code = "shutting_down"


class StoreUnavailableError(UnavailableError):
    """The shared store (Redis) is unreachable or did not answer in time; retry later. When Redis was slow
    rather than down, the call may still have taken effect (a send may have been enqueued)."""

    default_code = "store_unavailable"


_QUERY_PARAMS = frozenset({"timeout", "max_messages", "ack", "visibility_timeout"})
_PATH_PARAMS = frozenset({"workflow_id", "agent_id"})


def _location(param: str | None) -> list[str | int]:
    """FastAPI's ``loc`` for a parameter: ``["query", "timeout"]``, ``["path", "workflow_id"]``, ``["body", ...]``."""
    if param is None:
        return ["body"]
    if param in _QUERY_PARAMS:
        return ["query", param]
    if param in _PATH_PARAMS:
        return ["path", param]
    return ["body", *param.split(".")]


_BY_CODE: dict[str, type[A2AError]] = {
    "malformed_json": MalformedJSONError,
    "message_too_large": MessageTooLargeError,
    "queue_full": QueueFullError,
    "too_many_workflows": TooManyWorkflowsError,
    "too_many_agents": TooManyAgentsError,
    "store_unavailable": StoreUnavailableError,
}
_BY_HTTP: dict[int, type[A2AError]] = {
    400: MalformedJSONError,
    401: UnauthenticatedError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: MessageTooLargeError,
    422: InvalidRequestError,
    429: ResourceExhaustedError,
    503: UnavailableError,
}
_BY_GRPC: dict[str, type[A2AError]] = {
    "INVALID_ARGUMENT": InvalidRequestError,
    "UNAUTHENTICATED": UnauthenticatedError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "NOT_FOUND": NotFoundError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "UNAVAILABLE": UnavailableError,
}


def error_from_wire(
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    http_status: int | None = None,
    grpc_code: str | None = None,
) -> A2AError:
    """Rebuild the most specific error class from what a transport carried (used by the clients)."""
    cls = _BY_CODE.get(code or "")
    if cls is None and http_status is not None:
        cls = _BY_HTTP.get(http_status) or (InvalidRequestError if 400 <= http_status < 500 else A2AError)
    if cls is None and grpc_code is not None:
        cls = _BY_GRPC.get(grpc_code, A2AError)
    return (cls or A2AError)(message, param=param, code=code)
