"""gRPC adapter: ``a2a_service.v1.A2AService`` over a ``Store``, plus the standard health service.

``A2AError``s are translated in ``_translate`` (the one boundary): status code from the error class,
``a2a-error-code`` / ``a2a-error-param`` trailing metadata naming the machine code and the field.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .._stores._protocol import Store
from .._types import Delivery, RecordKind, RequestRecord, SendRequest
from .._validation import check_payload_bytes
from ..config import GRPC_MESSAGE_OVERHEAD, TRACEPARENT_HEADER, Settings
from ..errors import A2AError, InvalidRequestError, UnavailableError
from ..tracecontext import parse_traceparent
from ..v1 import a2a_pb2 as pb
from ..v1 import a2a_pb2_grpc as pb_grpc
from ._auth import Action, Authenticator, authorize
from ._wire import DEFAULT_MESSAGE_TYPE

log = logging.getLogger("a2a_service.grpc")

SERVICE_NAME = "a2a_service.v1.A2AService"
ERROR_CODE_KEY = "a2a-error-code"
ERROR_PARAM_KEY = "a2a-error-param"

F = TypeVar("F", bound=Callable[..., Any])


async def _abort(context: grpc.aio.ServicerContext, exc: A2AError) -> None:
    metadata = [(ERROR_CODE_KEY, exc.code)]
    if exc.param:
        metadata.append((ERROR_PARAM_KEY, exc.param))
    await context.abort(grpc.StatusCode[exc.grpc_code], exc.message, trailing_metadata=tuple(metadata))


def _trace_fields(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The caller's trace_id/span_id from its ``traceparent`` metadata (read only when logging)."""
    metadata = getattr(context, "invocation_metadata", None)  # logging must not fail on a minimal context
    for key, value in (metadata() if callable(metadata) else None) or ():
        if key == TRACEPARENT_HEADER and isinstance(value, str):
            trace = parse_traceparent(value)
            return trace.log_fields() if trace is not None else {}
    return {}


def _log_refused(context: grpc.aio.ServicerContext, exc: A2AError, method: str) -> None:
    if exc.http_status < 500 and log.isEnabledFor(logging.INFO):
        log.info("request refused", extra={"method": method, "code": exc.code, "param": exc.param,
                                           **_trace_fields(context)})


def _translate(method: F) -> F:
    """Turn ``A2AError`` (and anything unexpected) into a gRPC status, for unary and streaming methods."""
    if inspect.isasyncgenfunction(method):

        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except A2AError as exc:
                _log_refused(context, exc, method.__name__)
                await _abort(context, exc)
            except Exception:
                log.exception("unexpected error", extra={"method": method.__name__, **_trace_fields(context)})
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")

        stream_wrapper.__name__ = method.__name__
        return stream_wrapper  # type: ignore[return-value]

    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except A2AError as exc:
            _log_refused(context, exc, method.__name__)
            await _abort(context, exc)
        except Exception:
            log.exception("unexpected error", extra={"method": method.__name__, **_trace_fields(context)})
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    unary_wrapper.__name__ = method.__name__
    return unary_wrapper  # type: ignore[return-value]


def delivery_to_pb(d: Delivery) -> pb.Message:
    m = d.message
    out = pb.Message(
        message_id=m.message_id,
        workflow_id=m.workflow_id,
        source_agent=m.source_agent,
        target_agent=m.target_agent,
        message_type=m.message_type,
        payload=m.payload,
        created_at=m.created_at,
        expires_at=m.expires_at,
        delivery_count=d.delivery_count,
    )
    if d.lease_expires_at is not None:
        out.lease_expires_at = d.lease_expires_at
    return out


def record_from_pb(r: pb.RequestRecord) -> RequestRecord:
    try:
        kind = RecordKind(r.kind)
    except ValueError:
        kind = RecordKind.UNSPECIFIED  # counted as rejected by the store
    return RequestRecord(
        workflow_id=r.workflow_id,
        kind=kind,
        request_id=r.request_id,
        agent_id=r.agent_id,
        instance=r.instance,
        affinity_hit=r.affinity_hit,
        failover=r.failover,
        routing_latency_seconds=r.routing_latency_seconds,
        timestamp=r.timestamp,
        prompt_tokens=r.prompt_tokens,
        cached_tokens=r.cached_tokens,
        status_code=r.status_code,
    )


class A2AServicer(pb_grpc.A2AServiceServicer):
    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._auth = Authenticator.from_settings(settings)  # None: --auth none

    def _check(
        self, context: grpc.aio.ServicerContext, action: Action, workflow_id: str | None = None,
        agent: str | None = None,
    ) -> None:
        """The same rules as HTTP, from ``authorization: Bearer <token>`` metadata."""
        if self._auth is None:
            return
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                header = value
                break
        authorize(self._auth.authenticate(header), action, workflow_id, agent)

    # -- request field helpers (proto3 `optional` fields: unset -> server default)

    def _batch(self, request: Any) -> int:
        if not request.HasField("max_messages"):
            return self._settings.default_max_messages
        if request.max_messages < 1:
            raise InvalidRequestError("max_messages must be >= 1", param="max_messages", code="out_of_range")
        return min(request.max_messages, self._settings.max_messages_cap)

    def _lease(self, request: Any) -> float | None:
        if not request.ack:
            return None
        if not request.HasField("visibility_timeout_seconds"):
            return self._settings.visibility_timeout
        value = request.visibility_timeout_seconds
        if not (math.isfinite(value) and 0 < value <= self._settings.max_visibility_timeout):
            raise InvalidRequestError(
                f"visibility_timeout_seconds must be > 0 and <= {self._settings.max_visibility_timeout:g}",
                param="visibility_timeout_seconds",
                code="out_of_range",
            )
        return value

    @_translate
    async def SendMessage(self, request: pb.SendMessageRequest, context: grpc.aio.ServicerContext) -> Any:
        self._check(context, Action.SEND, request.workflow_id, request.source_agent)
        if self._store.closing:  # accepted now, a message could be dropped with a memory store
            raise UnavailableError("shutting down: send to another replica")
        s = self._settings
        try:
            payload = check_payload_bytes(request.payload, max_depth=s.json_max_depth, max_size=s.max_message_size)
        except A2AError as exc:
            await self._store.note_rejected(exc.code, request.workflow_id)
            raise
        result = await self._store.send(
            SendRequest(
                workflow_id=request.workflow_id,
                source_agent=request.source_agent,
                target_agent=request.target_agent,
                message_type=request.message_type or DEFAULT_MESSAGE_TYPE,
                payload=payload,
                ttl=request.ttl_seconds if request.HasField("ttl_seconds") else None,
            )
        )
        return pb.SendMessageResponse(
            message_id=result.message_id,
            delivered_to=result.delivered_to,
            created_at=result.created_at,
            expires_at=result.expires_at,
        )

    @_translate
    async def ReceiveMessages(self, request: pb.ReceiveMessagesRequest, context: grpc.aio.ServicerContext) -> Any:
        self._check(context, Action.RECEIVE, request.workflow_id, request.agent_id)
        s = self._settings
        timeout = request.timeout_seconds if request.HasField("timeout_seconds") else s.default_receive_timeout
        if not (math.isfinite(timeout) and timeout >= 0):
            raise InvalidRequestError("timeout_seconds must be >= 0", param="timeout_seconds", code="out_of_range")
        out = await self._store.receive(
            request.workflow_id,
            request.agent_id,
            max_messages=self._batch(request),
            timeout=min(timeout, s.receive_timeout_cap),
            visibility_timeout=self._lease(request),
        )
        return pb.ReceiveMessagesResponse(messages=[delivery_to_pb(d) for d in out])

    @_translate
    async def Subscribe(self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext) -> None:
        self._check(context, Action.RECEIVE, request.workflow_id, request.agent_id)
        batch = self._batch(request)
        lease = self._lease(request)
        store = self._store
        workflow_id, agent_id = request.workflow_id, request.agent_id
        wait = self._settings.receive_timeout_cap
        while not store.closing:
            out = await store.receive(workflow_id, agent_id, max_messages=batch, timeout=wait, visibility_timeout=lease)
            if not out:
                continue
            try:
                await context.write(pb.SubscribeResponse(messages=[delivery_to_pb(d) for d in out]))
            except asyncio.CancelledError:  # the client went away: the batch was not sent
                await store.release(workflow_id, agent_id, out)
                raise
            except Exception:  # the stream broke before the batch went out
                await store.release(workflow_id, agent_id, out)
                return

    @_translate
    async def AckMessages(self, request: pb.AckMessagesRequest, context: grpc.aio.ServicerContext) -> Any:
        self._check(context, Action.ACK, request.workflow_id, request.agent_id)
        result = await self._store.ack(request.workflow_id, request.agent_id, list(request.message_ids))
        return pb.AckMessagesResponse(acked=result.acked, not_found=result.not_found)

    @_translate
    async def GetWorkflowStatus(self, request: pb.GetWorkflowStatusRequest, context: grpc.aio.ServicerContext) -> Any:
        self._check(context, Action.STATUS, request.workflow_id)
        st = await self._store.status(request.workflow_id)
        out = pb.WorkflowStatus(
            workflow_id=st.workflow_id,
            active_agents=st.active_agents,
            agents=st.agents,
            total_requests=st.total_requests,
            affinity_hits=st.affinity_hits,
            affinity_hit_rate=st.affinity_hit_rate,
            failovers=st.failovers,
            completed_requests=st.completed_requests,
            failed_requests=st.failed_requests,
            cache_hits=st.cache_hits,
            cache_hit_rate=st.cache_hit_rate,
            prompt_tokens=st.prompt_tokens,
            cached_tokens=st.cached_tokens,
            avg_routing_latency_seconds=st.avg_routing_latency_seconds,
            created_at=st.created_at,
            last_updated=st.last_updated,
            queued_messages=st.queued_messages,
            in_flight_messages=st.in_flight_messages,
            queues={a: pb.QueueStatus(queued=q.queued, in_flight=q.in_flight) for a, q in st.queues.items()},
            messages=pb.MessageCounters(**_counters(st.messages)),
        )
        if st.assigned_instance is not None:
            out.assigned_instance = st.assigned_instance
        return out

    @_translate
    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext) -> Any:
        self._check(context, Action.STATS)
        st = await self._store.stats()
        return pb.SystemStats(
            active_workflows=st.active_workflows,
            max_workflows=st.max_workflows,
            workflows_created=st.workflows_created,
            workflows_expired=st.workflows_expired,
            workflows_deleted=st.workflows_deleted,
            total_requests=st.total_requests,
            affinity_hits=st.affinity_hits,
            affinity_hit_rate=st.affinity_hit_rate,
            completed_requests=st.completed_requests,
            cache_hits=st.cache_hits,
            cache_hit_rate=st.cache_hit_rate,
            prompt_tokens=st.prompt_tokens,
            cached_tokens=st.cached_tokens,
            records_rejected=st.records_rejected,
            queues=st.queues,
            queued_messages=st.queued_messages,
            in_flight_messages=st.in_flight_messages,
            messages=pb.MessageCounters(**_counters(st.messages)),
            rejected_by_code=st.rejected_by_code,
            uptime_seconds=st.uptime_seconds,
        )

    @_translate
    async def DeleteWorkflow(self, request: pb.DeleteWorkflowRequest, context: grpc.aio.ServicerContext) -> Any:
        self._check(context, Action.DELETE)
        result = await self._store.delete_workflow(request.workflow_id)
        return pb.DeleteWorkflowResponse(workflow_id=result.workflow_id, dropped_messages=result.dropped_messages)

    @_translate
    async def RecordRequests(self, request: pb.RecordRequestsRequest, context: grpc.aio.ServicerContext) -> Any:
        self._check(context, Action.RECORD)
        if len(request.records) > self._settings.max_records_per_batch:
            raise InvalidRequestError(
                f"at most {self._settings.max_records_per_batch} records per call", param="records", code="too_many"
            )
        result = await self._store.record([record_from_pb(r) for r in request.records])
        return pb.RecordRequestsResponse(accepted=result.accepted, rejected=result.rejected)


def _counters(c: Any) -> dict[str, int]:
    return {
        "sent": c.sent,
        "delivered": c.delivered,
        "acked": c.acked,
        "redelivered": c.redelivered,
        "expired": c.expired,
        "rejected": c.rejected,
        "dropped": c.dropped,
    }


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS of the gRPC port (None: plaintext); with a client CA, callers without a certificate it signed are
    refused in the handshake (mTLS)."""
    if not settings.tls_cert_file:
        return None
    with open(settings.tls_key_file, "rb") as key, open(settings.tls_cert_file, "rb") as cert:
        pair = (key.read(), cert.read())
    ca = None
    if settings.tls_client_ca_file:
        with open(settings.tls_client_ca_file, "rb") as file:
            ca = file.read()
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


class _Undecodable:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _RefuseUndecodable(grpc.aio.ServerInterceptor):
    """Bytes that are no valid request message: INVALID_ARGUMENT naming the type, instead of grpc.aio's UNKNOWN
    (it decodes before any handler runs, so ``_translate`` never sees the error). Handlers are wrapped once
    per method, not per call."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        if method in self._wrapped:
            return self._wrapped[method]
        handler = await continuation(details)
        if handler is None:
            return None  # unknown method: not cached, so made-up method names cannot grow the cache
        if handler.request_deserializer is not None and not handler.request_streaming:
            handler = self._wrap(handler)
        self._wrapped[method] = handler
        return handler

    @staticmethod
    def _wrap(handler: Any) -> Any:
        decode = handler.request_deserializer

        def safe_decode(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception as exc:  # protobuf's DecodeError, or anything a codec raises
                return _Undecodable(f"request is not a valid message: {exc}")

        if handler.response_streaming and inspect.isasyncgenfunction(handler.unary_stream):
            stream = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
                async for item in stream(request, context):
                    yield item

            return handler._replace(request_deserializer=safe_decode, unary_stream=unary_stream)
        # Unary, or streaming through context.write() (Subscribe, health's Watch): a coroutine either way.
        field = "unary_stream" if handler.response_streaming else "unary_unary"
        unary = getattr(handler, field)
        if not inspect.iscoroutinefunction(unary):
            return handler

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            return await unary(request, context)

        return handler._replace(request_deserializer=safe_decode, **{field: unary_unary})


class GrpcServer:
    """The gRPC server of one service process (A2A service + grpc.health.v1)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.server = grpc.aio.server(
            interceptors=[_RefuseUndecodable()],
            options=[
                ("grpc.so_reuseport", 0),  # fail loudly if the port is taken instead of sharing it
                ("grpc.max_receive_message_length", settings.max_message_size + GRPC_MESSAGE_OVERHEAD),
                ("grpc.max_send_message_length", -1),
            ]
        )
        pb_grpc.add_A2AServiceServicer_to_server(A2AServicer(store, settings), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._address = format_address(settings.host, settings.grpc_port)
        self._credentials = server_credentials(settings)
        self.port = 0

    async def start(self) -> int:
        try:
            self.port = (self.server.add_insecure_port(self._address) if self._credentials is None
                         else self.server.add_secure_port(self._address, self._credentials))
        except RuntimeError as exc:  # grpc reports a taken port this way
            raise OSError(f"cannot bind gRPC port {self._address}: {exc}") from exc
        if not self.port:
            raise OSError(f"cannot bind gRPC port {self._address}")
        await self.server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
