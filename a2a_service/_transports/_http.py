"""HTTP/JSON adapter: a FastAPI app over a ``Store``.

Request bodies are read as bytes (size-checked first) and parsed by ``_wire`` with orjson rather than by
pydantic: it is several times cheaper per request and lets payloads be stored as the JSON bytes they
arrive as. The pydantic models below only document the API in ``/docs`` and ``/openapi.json``. The hot
routes (send, receive, ack) are also answered ahead of FastAPI's middleware stack: see ``HotPaths``.

Every error is ``{"error": {"message", "type", "param", "code"}}``; ``A2AError``s are translated in
``_error_response`` (the one boundary), FastAPI/Starlette's own errors are mapped to the same shape.
"""

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from .._logging import reset_trace, set_trace
from .._stores._protocol import Store
from .._types import Delivery
from .._validation import check_id, sanitize_for_log
from ..config import ID_CHARSET, ID_MAX_LENGTH, Settings
from ..errors import (
    A2AError,
    InvalidRequestError,
    MessageTooLargeError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from . import _wire
from ._auth import Action, Authenticator, Principal, authorize, parse_token_request, www_authenticate
from ._metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("a2a_service.http")

JSON = "application/json"
_ID_PATTERN = f"^[{ID_CHARSET}]{{1,{ID_MAX_LENGTH}}}$"


# ---------------------------------------------------------------------- documentation models


class SendMessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_agent: str = Field(pattern=_ID_PATTERN, description="Sending agent id")
    target_agent: str = Field(description="Receiving agent id, or '*' for every other known agent")
    message_type: str = Field("message", pattern=_ID_PATTERN)
    payload: Any = Field(default_factory=dict, description="Any JSON value (nesting depth limited)")
    ttl: float | None = Field(None, gt=0, description="Seconds before the message expires (default 300)")


class SendMessageResult(BaseModel):
    message_id: str
    workflow_id: str
    delivered_to: list[str]
    created_at: float
    expires_at: float


class MessageOut(BaseModel):
    message_id: str
    workflow_id: str
    source_agent: str
    target_agent: str
    message_type: str
    payload: Any
    created_at: float
    expires_at: float
    delivery_count: int
    lease_expires_at: float | None = Field(description="Set when received with ack=true")


class ReceiveResult(BaseModel):
    messages: list[MessageOut]


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_ids: list[str]


class AckResultOut(BaseModel):
    acked: list[str]
    not_found: list[str]


class RecordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(description="'ROUTED' or 'COMPLETED'")
    workflow_id: str
    request_id: str = ""
    agent_id: str = ""
    instance: str = ""
    affinity_hit: bool = False
    failover: bool = False
    routing_latency_seconds: float = 0.0
    timestamp: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    status_code: int = 0


class RecordsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[RecordIn]


class RecordResultOut(BaseModel):
    accepted: int
    rejected: int


class QueueStatusOut(BaseModel):
    queued: int
    in_flight: int


class MessageCountersOut(BaseModel):
    sent: int
    delivered: int
    acked: int
    redelivered: int
    expired: int
    rejected: int
    dropped: int


class WorkflowStatusOut(BaseModel):
    workflow_id: str
    active_agents: int
    agents: list[str]
    total_requests: int
    affinity_hits: int
    affinity_hit_rate: float
    failovers: int
    completed_requests: int
    failed_requests: int
    cache_hits: int
    cache_hit_rate: float = Field(description="cached_tokens / prompt_tokens")
    prompt_tokens: int
    cached_tokens: int
    avg_routing_latency_seconds: float
    assigned_instance: str | None
    created_at: float
    last_updated: float
    queued_messages: int
    in_flight_messages: int
    queues: dict[str, QueueStatusOut]
    messages: MessageCountersOut


class SystemStatsOut(BaseModel):
    active_workflows: int
    max_workflows: int
    workflows_created: int
    workflows_expired: int
    workflows_deleted: int
    total_requests: int
    affinity_hits: int
    affinity_hit_rate: float
    completed_requests: int
    cache_hits: int
    cache_hit_rate: float
    prompt_tokens: int
    cached_tokens: int
    records_rejected: int
    queues: int
    queued_messages: int
    in_flight_messages: int
    messages: MessageCountersOut
    rejected_by_code: dict[str, int]
    uptime_seconds: float


class DeleteResultOut(BaseModel):
    workflow_id: str
    dropped_messages: int


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl: float | None = Field(None, gt=0, description="Token lifetime in seconds (default --auth-token-ttl)")


class TokenOut(BaseModel):
    token: str = Field(description="JWT to send as 'Authorization: Bearer <token>'")
    expires_at: float = Field(description="Epoch seconds")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {JSON: {"schema": model.model_json_schema()}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "Malformed JSON"),
        (401, "Missing, invalid or expired bearer token (only with --auth jwt)"),
        (403, "The token does not cover this workflow/agent, or the call needs the admin token"),
        (404, "Unknown workflow"),
        (413, "Message too large"),
        (422, "Invalid field (named in error.param)"),
        (429, "Queue full / too many workflows or agents"),
        (503, "Shutting down, or the shared store (Redis) is unavailable (code store_unavailable)"),
    )
}

WorkflowId = Annotated[str, Path(description=f"1..{ID_MAX_LENGTH} characters from [{ID_CHARSET}]")]
AgentId = Annotated[str, Path(description=f"1..{ID_MAX_LENGTH} characters from [{ID_CHARSET}]")]


def _receive_params_doc(settings: Settings) -> dict[str, Any]:
    def param(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}

    return {
        "parameters": [
            param(
                "timeout",
                {"type": "number", "minimum": 0, "default": settings.default_receive_timeout},
                f"Seconds to wait when the queue is empty (longer values are shortened to "
                f"{settings.receive_timeout_cap:g})",
            ),
            param(
                "max_messages",
                {"type": "integer", "minimum": 1, "default": settings.default_max_messages},
                f"Most messages to return (larger values are shortened to {settings.max_messages_cap})",
            ),
            param(
                "ack",
                {"type": "boolean", "default": False},
                "Lease the messages instead of removing them; acknowledge with .../messages/ack",
            ),
            param(
                "visibility_timeout",
                {"type": "number", "exclusiveMinimum": 0, "maximum": settings.max_visibility_timeout},
                f"Lease length in seconds with ack=true (default {settings.visibility_timeout:g})",
            ),
        ]
    }


# ---------------------------------------------------------------------- the hot endpoints


class HotPaths:
    """Send, receive and ack: the request logic, on raw ASGI ``scope``/``receive``.

    Called by the FastAPI routes and, before FastAPI's middleware stack, by ``dispatch`` (the fast path).
    The fast path exists because that stack (error/exception middlewares, exit stacks, dependency
    solving) cost about two thirds of the CPU of a send: measured on this 2-core machine, 5.5k sends/s
    through FastAPI against 17k/s through ``dispatch``. Both paths run the same functions below.
    """

    def __init__(self, store: Store, settings: Settings, auth: Authenticator | None = None) -> None:
        self.store = store
        self.settings = settings
        self.max_body = settings.max_body_size
        self.auth = auth  # None: --auth none, every call allowed

    def principal(self, scope: Scope) -> Principal:
        """The caller, from its bearer token; ``UnauthenticatedError`` when missing or invalid."""
        assert self.auth is not None
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        return self.auth.authenticate(header)

    def check(self, scope: Scope, action: Action, workflow_id: str | None = None, agent: str | None = None) -> None:
        if self.auth is not None:
            authorize(self.principal(scope), action, workflow_id, agent)

    async def read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, refused with 413 from Content-Length before reading when it is too large."""
        max_body = self.max_body
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    raise InvalidRequestError("invalid Content-Length", param="content-length")
                if int(value) > max_body:
                    raise MessageTooLargeError(
                        f"body is {int(value)} bytes; the limit is {max_body} "
                        f"({self.settings.max_message_size} of payload plus envelope)",
                        param="body",
                    )
                break
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        chunks = bytearray(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequestError("client disconnected while sending the body", param="body")
            chunks += message.get("body", b"")
            if len(chunks) > max_body:
                raise MessageTooLargeError(f"body exceeds the limit of {max_body} bytes", param="body")
            if not message.get("more_body", False):
                return bytes(chunks)

    async def send(self, workflow_id: str, scope: Scope, receive: Receive) -> bytes:
        # Authenticated before the body is read; the sender is known only once it is parsed.
        principal = self.principal(scope) if self.auth is not None else None
        if self.store.closing:  # accepted now, a message could be dropped with a memory store
            raise UnavailableError("shutting down: send to another replica")
        try:
            request = _wire.parse_send(await self.read_body(scope, receive), workflow_id, self.settings)
        except A2AError as exc:
            await self.store.note_rejected(exc.code, workflow_id)
            raise
        if principal is not None:
            authorize(principal, Action.SEND, workflow_id, request.source_agent)
        return _wire.encode_send_result(workflow_id, await self.store.send(request))

    async def receive(self, workflow_id: str, agent_id: str, scope: Scope, receive: Receive) -> bytes:
        self.check(scope, Action.RECEIVE, workflow_id, agent_id)
        p = _wire.parse_receive_query(scope["query_string"].decode("latin-1"), self.settings)
        store = self.store
        out = await store.receive(
            workflow_id, agent_id, max_messages=p.max_messages, timeout=0.0, visibility_timeout=p.visibility_timeout
        )
        if not out and p.timeout > 0 and not store.closing:
            poll = store.receive(
                workflow_id,
                agent_id,
                max_messages=p.max_messages,
                timeout=p.timeout,
                visibility_timeout=p.visibility_timeout,
            )
            out = await _unless_disconnected(receive, poll)
        return _wire.encode_deliveries(out)

    async def ack(self, workflow_id: str, agent_id: str, scope: Scope, receive: Receive) -> bytes:
        self.check(scope, Action.ACK, workflow_id, agent_id)
        ids = _wire.parse_ack(await self.read_body(scope, receive), self.settings)
        return _wire.encode(await self.store.ack(workflow_id, agent_id, ids))

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve ``scope`` if it is one of the hot routes (same paths and methods as the FastAPI routes)."""
        path: str = scope["path"]
        if not path.startswith("/v1/workflows/"):
            return False
        parts = path.split("/")  # "", "v1", "workflows", {workflow_id}, ...
        n = len(parts)
        method = scope["method"]
        status = 200
        if n == 5 and parts[4] == "messages" and method == "POST" and parts[3]:
            call, status = self.send(parts[3], scope, receive), 201
        elif n in (7, 8) and parts[4] == "agents" and parts[6] == "messages" and parts[3] and parts[5]:
            if n == 7 and method == "GET":
                call = self.receive(parts[3], parts[5], scope, receive)
            elif n == 8 and parts[7] == "ack" and method == "POST":
                call = self.ack(parts[3], parts[5], scope, receive)
            else:
                return False
        else:
            return False
        headers = [(b"content-type", b"application/json")]
        try:
            body = await call
        except A2AError as exc:
            status, body = exc.http_status, _wire.encode(exc.to_json())
            if status in (429, 503):
                headers.append((b"retry-after", b"1"))
            elif isinstance(exc, UnauthenticatedError):
                headers.append((b"www-authenticate", www_authenticate(exc).encode()))
            if status < 500:
                _log_refused(exc, path)
        except Exception:
            log.exception("unexpected error", extra={"path": sanitize_for_log(path, 200)})
            status, body = 500, _wire.encode(A2AError("internal error").to_json())
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True


class A2AApp(FastAPI):
    """FastAPI, with the hot routes answered before the middleware stack (see ``HotPaths``)."""

    hot: HotPaths | None = None
    draining: bool = False  # SIGTERM received: still serving, but /healthz says not ready (drain_delay)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = None
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"traceparent":  # for our logs only; the header is not forwarded anywhere
                    token = set_trace(value.decode("latin-1"))
                    break
        try:
            hot = self.hot
            if hot is not None and scope["type"] == "http" and await hot.dispatch(scope, receive, send):
                return
            await super().__call__(scope, receive, send)
        finally:
            if token is not None:
                reset_trace(token)


# ---------------------------------------------------------------------- app


def create_app(store: Store, settings: Settings, *, fast_path: bool = True) -> A2AApp:
    """The HTTP API over ``store``. The caller owns the store's lifecycle (``start``/``close``).

    ``fast_path=False`` serves every route through FastAPI (same behaviour, slower; used by tests).
    Raises ``ValueError`` when the ``--auth`` key files cannot be used."""
    auth = Authenticator.from_settings(settings)
    app = A2AApp(
        title="A2A service",
        version="1.0.0",
        description="Agent-to-agent message queues and workflow status/stats. Same operations over gRPC "
        '(`a2a_service.v1.A2AService`). Errors: `{"error": {"message", "type", "param", "code"}}`.',
        # A trailing slash (e.g. a decoded %2F in an id) is a 404 JSON error, not a bodiless 307 redirect.
        redirect_slashes=False,
    )
    metrics = Metrics()
    hot = HotPaths(store, settings, auth)
    app.hot = hot if fast_path else None

    # Fixed paths first, so that they are never taken for a workflow id.
    @app.get("/v1/workflows/stats", response_model=SystemStatsOut, tags=["workflows"])
    async def get_stats(request: Request) -> Response:
        """System-wide figures (monotonic counters since start, plus current gauges). Admin."""
        hot.check(request.scope, Action.STATS)
        return Response(_wire.encode(await store.stats()), media_type=JSON)

    @app.post(
        "/v1/workflows/records",
        response_model=RecordResultOut,
        responses=_ERRORS,
        openapi_extra=_body_doc(RecordsBody),
        tags=["router"],
    )
    async def record_requests(request: Request) -> Response:
        """Batched reports from the ext_proc router (ROUTED / COMPLETED records). Router or admin token."""
        hot.check(request.scope, Action.RECORD)
        records = _wire.parse_records(await hot.read_body(request.scope, request.receive), settings)
        return Response(_wire.encode(await store.record(records)), media_type=JSON)

    @app.post(
        "/v1/workflows/{workflow_id}/messages",
        status_code=201,
        response_model=SendMessageResult,
        responses=_ERRORS,
        openapi_extra=_body_doc(SendMessageBody),
        tags=["messages"],
    )
    async def send_message(workflow_id: WorkflowId, request: Request) -> Response:
        """Enqueue a message for `target_agent` (or every other known agent with `*`)."""
        return Response(await hot.send(workflow_id, request.scope, request.receive), 201, media_type=JSON)

    @app.get(
        "/v1/workflows/{workflow_id}/agents/{agent_id}/messages",
        response_model=ReceiveResult,
        responses=_ERRORS,
        openapi_extra=_receive_params_doc(settings),
        tags=["messages"],
    )
    async def receive_messages(workflow_id: WorkflowId, agent_id: AgentId, request: Request) -> Response:
        """Long-poll: returns as soon as at least one message is available, or `[]` after `timeout`."""
        return Response(await hot.receive(workflow_id, agent_id, request.scope, request.receive), media_type=JSON)

    @app.post(
        "/v1/workflows/{workflow_id}/agents/{agent_id}/messages/ack",
        response_model=AckResultOut,
        responses=_ERRORS,
        openapi_extra=_body_doc(AckBody),
        tags=["messages"],
    )
    async def ack_messages(workflow_id: WorkflowId, agent_id: AgentId, request: Request) -> Response:
        """Acknowledge messages received with `ack=true`; unknown ids are listed in `not_found`."""
        return Response(await hot.ack(workflow_id, agent_id, request.scope, request.receive), media_type=JSON)

    @app.get(
        "/v1/workflows/{workflow_id}/status", response_model=WorkflowStatusOut, responses=_ERRORS, tags=["workflows"]
    )
    async def get_status(workflow_id: WorkflowId, request: Request) -> Response:
        """The workflow's routing statistics and message queues."""
        hot.check(request.scope, Action.STATUS, workflow_id)
        return Response(_wire.encode(await store.status(workflow_id)), media_type=JSON)

    @app.delete("/v1/workflows/{workflow_id}", response_model=DeleteResultOut, responses=_ERRORS, tags=["workflows"])
    async def delete_workflow(workflow_id: WorkflowId, request: Request) -> Response:
        """Drop the workflow's queues (messages counted as dropped) and statistics. Admin."""
        hot.check(request.scope, Action.DELETE)
        return Response(_wire.encode(await store.delete_workflow(workflow_id)), media_type=JSON)

    @app.post(
        "/v1/workflows/{workflow_id}/agents/{agent_id}/token",
        response_model=TokenOut,
        responses=_ERRORS,
        openapi_extra={
            "requestBody": {"required": False, "content": {JSON: {"schema": TokenBody.model_json_schema()}}}
        },
        tags=["auth"],
    )
    async def issue_token(workflow_id: WorkflowId, agent_id: AgentId, request: Request) -> Response:
        """Admin: a signed agent token for this workflow and agent (stateless: every replica accepts it)."""
        hot.check(request.scope, Action.ISSUE_TOKEN)
        if auth is None:
            raise InvalidRequestError("authentication is off (--auth none): there are no tokens", code="auth_disabled")
        check_id(workflow_id, "workflow_id")
        check_id(agent_id, "agent_id")
        ttl = parse_token_request(await hot.read_body(request.scope, request.receive))
        token, expires_at = auth.issue(workflow_id, agent_id, ttl)
        return Response(_wire.encode({"token": token, "expires_at": expires_at}), media_type=JSON)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(await store.stats()), media_type=CONTENT_TYPE)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> Response:
        """Readiness: 503 while shutting down or while the store (Redis) cannot be reached."""
        if store.closing or app.draining:
            return _error_response(UnavailableError("shutting down"))
        try:
            await store.ping()
        except A2AError as exc:
            return _error_response(exc)
        return Response(b'{"status":"ok"}', media_type=JSON)

    _install_error_handlers(app)
    _declare_bearer(app, required=auth is not None)
    return app


def _declare_bearer(app: FastAPI, *, required: bool) -> None:
    """Declare the bearer scheme in the OpenAPI document: required on the /v1 routes with ``--auth jwt``,
    optional (``{}`` alternative) without."""
    base = app.openapi
    security: list[dict[str, list[str]]] = [{"bearerAuth": []}] if required else [{"bearerAuth": []}, {}]

    def openapi() -> dict[str, Any]:
        schema = base()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearerAuth"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An agent token (JWT: workflow_id, agent_id, aud, exp), a router token, or the admin "
            "token. Needed when the service runs with --auth jwt; see docs/security.md.",
        }
        for path, operations in schema.get("paths", {}).items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = security
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _unless_disconnected(receive: Receive, poll: Coroutine[Any, Any, list[Delivery]]) -> list[Delivery]:
    """Run the long-poll, but cancel it (putting back anything it took) if the client goes away, so that a
    dead connection never swallows at-most-once messages."""
    polling = asyncio.ensure_future(poll)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((polling, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not polling.done():
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        return []
    return polling.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _log_refused(exc: A2AError, path: str) -> None:
    """A 4xx answer at info level (with the caller's trace id when it sent a traceparent)."""
    if log.isEnabledFor(logging.INFO):
        log.info("request refused", extra={"status": exc.http_status, "code": exc.code, "param": exc.param,
                                           "path": sanitize_for_log(path, 200)})


def _error_response(exc: A2AError) -> Response:
    headers = {"retry-after": "1"} if exc.http_status in (429, 503) else None
    if isinstance(exc, UnauthenticatedError):
        headers = {"www-authenticate": www_authenticate(exc)}
    return Response(_wire.encode(exc.to_json()), status_code=exc.http_status, media_type=JSON, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_a2a_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, A2AError)
        if exc.http_status >= 500 and not isinstance(exc, UnavailableError):  # outages are logged by the store
            log.error("request failed", extra={"path": sanitize_for_log(request.url.path, 200), "code": exc.code})
        elif exc.http_status < 500:
            _log_refused(exc, request.url.path)
        return _error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body", "header")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid"))
        return _error_response(InvalidRequestError(message, param=param, code="invalid_value"))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            err: A2AError = NotFoundError(
                f"no route for {sanitize_for_log(request.url.path, 200)}", code="route_not_found"
            )
        elif exc.status_code == 405:
            err = InvalidRequestError(f"method {request.method} not allowed here", code="method_not_allowed")
            return Response(_wire.encode(err.to_json()), status_code=405, media_type=JSON)
        else:
            err = InvalidRequestError(str(exc.detail), code="http_error")
            return Response(_wire.encode(err.to_json()), status_code=exc.status_code, media_type=JSON)
        return _error_response(err)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error", extra={"path": sanitize_for_log(request.url.path, 200)})
        return _error_response(A2AError("internal error"))

    app.add_exception_handler(A2AError, on_a2a_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
