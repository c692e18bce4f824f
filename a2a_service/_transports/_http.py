"""HTTP/JSON adapter: a FastAPI app over a ``Store``.

Request bodies are read as bytes (size-checked first) and parsed by ``_wire`` with orjson rather than by
pydantic: it is several times cheaper per request and lets payloads be stored as the JSON bytes they
arrive as. The pydantic models of ``_http_docs`` only document the API in ``/docs`` and ``/openapi.json``. The hot
routes (send, receive, ack) are also answered ahead of FastAPI's middleware stack: see ``_http_hot.HotPaths``.

Every error is ``{"error": {"message", "type", "param", "code"}}``; ``A2AError``s are translated in
``_error_response`` (the one boundary), FastAPI/Starlette's own errors are mapped to the same shape.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from .._logging import reset_trace, set_trace
from .._stores._protocol import Store
from .._stores._settle import settled_status
from .._validation import check_id, sanitize_for_log
from ..config import Settings
from ..errors import A2AError, InvalidRequestError, NotFoundError, UnauthenticatedError, UnavailableError
from . import _wire
from ._auth import Action, Authenticator, parse_token_request, www_authenticate
from ._http_docs import (
    ERRORS,
    JSON,
    AckBody,
    AckResultOut,
    AgentId,
    DeleteResultOut,
    ReceiveResult,
    RecordResultOut,
    RecordsBody,
    SendMessageBody,
    SendMessageResult,
    SystemStatsOut,
    TokenBody,
    TokenOut,
    WorkflowId,
    WorkflowStatusOut,
    body_doc,
    receive_params_doc,
)
from ._http_hot import HotPaths, log_refused
from ._metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("a2a_service.http")


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
    hot = HotPaths(store, settings, auth)
    app.hot = hot if fast_path else None
    # Fixed paths first, so that they are never taken for a workflow id.
    _add_fixed_workflow_routes(app, hot)
    _add_message_routes(app, hot)
    _add_workflow_routes(app, hot)
    _add_service_routes(app, hot, Metrics())
    _install_error_handlers(app)
    _declare_bearer(app, required=auth is not None)
    return app


def _add_fixed_workflow_routes(app: A2AApp, hot: HotPaths) -> None:
    store, settings = hot.store, hot.settings

    @app.get("/v1/workflows/stats", response_model=SystemStatsOut, tags=["workflows"])
    async def get_stats(request: Request) -> Response:
        """System-wide figures (monotonic counters since start, plus current gauges). Admin."""
        hot.check(request.scope, Action.STATS)
        return Response(_wire.encode_stats(await store.stats()), media_type=JSON)

    @app.post(
        "/v1/workflows/records",
        response_model=RecordResultOut,
        responses=ERRORS,
        openapi_extra=body_doc(RecordsBody),
        tags=["router"],
    )
    async def record_requests(request: Request) -> Response:
        """Batched reports from the ext_proc router (ROUTED / COMPLETED records). Router or admin token."""
        hot.check(request.scope, Action.RECORD)
        records = _wire.parse_records(await hot.read_body(request.scope, request.receive), settings)
        return Response(_wire.encode(await store.record(records)), media_type=JSON)


def _add_message_routes(app: A2AApp, hot: HotPaths) -> None:
    @app.post(
        "/v1/workflows/{workflow_id}/messages",
        response_model=SendMessageResult,
        responses=ERRORS,
        openapi_extra=body_doc(SendMessageBody),
        tags=["messages"],
    )
    async def send_message(workflow_id: WorkflowId, request: Request) -> Response:
        """Enqueue a message for `target_agent` (or every other known agent with `*`)."""
        return Response(await hot.send(workflow_id, request.scope, request.receive), media_type=JSON)

    @app.get(
        "/v1/workflows/{workflow_id}/agents/{agent_id}/messages",
        response_model=ReceiveResult,
        responses=ERRORS,
        openapi_extra=receive_params_doc(hot.settings),
        tags=["messages"],
    )
    async def receive_messages(workflow_id: WorkflowId, agent_id: AgentId, request: Request) -> Response:
        """Long-poll: returns as soon as at least one message is available, or `[]` after `timeout`."""
        return Response(await hot.receive(workflow_id, agent_id, request.scope, request.receive), media_type=JSON)

    @app.post(
        "/v1/workflows/{workflow_id}/agents/{agent_id}/messages/ack",
        response_model=AckResultOut,
        responses=ERRORS,
        openapi_extra=body_doc(AckBody),
        tags=["messages"],
    )
    async def ack_messages(workflow_id: WorkflowId, agent_id: AgentId, request: Request) -> Response:
        """Acknowledge messages received with `ack=true`; unknown ids are listed in `not_found`."""
        return Response(await hot.ack(workflow_id, agent_id, request.scope, request.receive), media_type=JSON)


def _add_workflow_routes(app: A2AApp, hot: HotPaths) -> None:
    store, auth = hot.store, hot.auth

    @app.get(
        "/v1/workflows/{workflow_id}/status", response_model=WorkflowStatusOut, responses=ERRORS, tags=["workflows"]
    )
    async def get_status(workflow_id: WorkflowId, request: Request) -> Response:
        """The workflow's routing statistics and message queues. Waits up to `--status-settle` seconds for the
        router's reports of requests routed but not yet reported complete."""
        hot.check(request.scope, Action.STATUS, workflow_id)
        status = await settled_status(store, workflow_id, hot.settings.status_settle)
        return Response(_wire.encode(status), media_type=JSON)

    @app.delete("/v1/workflows/{workflow_id}", response_model=DeleteResultOut, responses=ERRORS, tags=["workflows"])
    async def delete_workflow(workflow_id: WorkflowId, request: Request) -> Response:
        """Drop the workflow's queues (messages counted as dropped) and statistics. Admin."""
        hot.check(request.scope, Action.DELETE)
        return Response(_wire.encode(await store.delete_workflow(workflow_id)), media_type=JSON)

    @app.post(
        "/v1/workflows/{workflow_id}/agents/{agent_id}/token",
        response_model=TokenOut,
        responses=ERRORS,
        openapi_extra=body_doc(TokenBody, required=False),
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


def _add_service_routes(app: A2AApp, hot: HotPaths, metrics: Metrics) -> None:
    store = hot.store

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
            log_refused(exc, request.url.path)
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
            return Response(_wire.encode(err.to_json(405)), status_code=405, media_type=JSON)
        else:
            err = InvalidRequestError(str(exc.detail), code="http_error")
            return Response(_wire.encode(err.to_json(exc.status_code)), status_code=exc.status_code, media_type=JSON)
        return _error_response(err)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error", extra={"path": sanitize_for_log(request.url.path, 200)})
        return _error_response(A2AError("internal error"))

    app.add_exception_handler(A2AError, on_a2a_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
