"""gRPC adapter: the ``a2a_service.v1.A2AService`` servicer over a ``Store`` (the server that hosts it, with the
standard health service, is ``_grpc_server``; the value <-> protobuf mapping is ``_proto``).

``A2AError``s are translated in ``_translate`` (the one boundary): status code from the error class,
``a2a-error-code`` / ``a2a-error-param`` trailing metadata naming the machine code and the field.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from .._stores._protocol import Store
from .._stores._settle import settled_status
from .._types import SendRequest
from .._validation import check_payload_bytes
from ..config import TRACEPARENT_HEADER, Settings
from ..errors import A2AError, InvalidRequestError, UnavailableError
from ..tracecontext import parse_traceparent
from ..v1 import a2a_pb2 as pb
from ..v1 import a2a_pb2_grpc as pb_grpc
from ._auth import Action, Authenticator, authorize
from ._proto import (
    ack_result_to_pb,
    delete_result_to_pb,
    delivery_to_pb,
    record_from_pb,
    record_result_to_pb,
    send_result_to_pb,
    stats_to_pb,
    status_to_pb,
)
from ._wire import DEFAULT_MESSAGE_TYPE, check_receive_limits, may_have_more

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger("a2a_service.grpc")

SERVICE_NAME = "a2a_service.v1.A2AService"
ERROR_CODE_KEY = "a2a-error-code"
ERROR_PARAM_KEY = "a2a-error-param"

F = TypeVar("F", bound=Callable[..., Any])


async def _abort(context: Context, exc: A2AError) -> None:
    metadata = [(ERROR_CODE_KEY, exc.code)]
    if exc.param:
        metadata.append((ERROR_PARAM_KEY, exc.param))
    await context.abort(grpc.StatusCode[exc.grpc_code], exc.message, trailing_metadata=tuple(metadata))


def _trace_fields(context: Context) -> dict[str, str]:
    """The caller's trace_id/span_id from its ``traceparent`` metadata (read only when logging)."""
    metadata = getattr(context, "invocation_metadata", None)  # logging must not fail on a minimal context
    for key, value in (metadata() if callable(metadata) else None) or ():
        if key == TRACEPARENT_HEADER and isinstance(value, str):
            trace = parse_traceparent(value)
            return trace.log_fields() if trace is not None else {}
    return {}


def _log_refused(context: Context, exc: A2AError, method: str) -> None:
    if exc.http_status < 500 and log.isEnabledFor(logging.INFO):
        log.info("request refused", extra={"method": method, "code": exc.code, "param": exc.param,
                                           **_trace_fields(context)})


def _translate(method: F) -> F:
    """Turn ``A2AError`` (and anything unexpected) into a gRPC status, for unary and streaming methods."""
    if inspect.isasyncgenfunction(method):

        async def stream_wrapper(self: Any, request: Any, context: Context) -> AsyncIterator[Any]:
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

    async def unary_wrapper(self: Any, request: Any, context: Context) -> Any:
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


class A2AServicer(pb_grpc.A2AServiceServicer):  # type: ignore[misc]  # generated base, untyped (no stub)
    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._auth = Authenticator.from_settings(settings)  # None: --auth none

    def _check(
        self, context: Context, action: Action, workflow_id: str | None = None,
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

    def _batch(self, request: pb.ReceiveMessagesRequest | pb.SubscribeRequest) -> int:
        if not request.HasField("max_messages"):
            return self._settings.default_max_messages
        cap = self._settings.max_messages_cap
        if not 1 <= request.max_messages <= cap:
            raise InvalidRequestError(
                f"max_messages must be >= 1 and <= {cap}", param="max_messages", code="out_of_range"
            )
        return request.max_messages

    def _lease(self, request: pb.ReceiveMessagesRequest | pb.SubscribeRequest) -> float | None:
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
    async def SendMessage(self, request: pb.SendMessageRequest, context: Context) -> Any:
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
        return send_result_to_pb(result)

    @_translate
    async def ReceiveMessages(self, request: pb.ReceiveMessagesRequest, context: Context) -> Any:
        self._check(context, Action.RECEIVE, request.workflow_id, request.agent_id)
        s = self._settings
        timeout = request.timeout_seconds if request.HasField("timeout_seconds") else s.default_timeout
        batch = self._batch(request)
        check_receive_limits(timeout, batch, s, timeout_param="timeout_seconds")
        out = await self._store.receive(
            request.workflow_id,
            request.agent_id,
            max_messages=batch,
            timeout=timeout,
            visibility_timeout=self._lease(request),
        )
        return pb.ReceiveMessagesResponse(
            messages=[delivery_to_pb(d) for d in out], has_more=may_have_more(out, batch, s)
        )

    @_translate
    async def Subscribe(self, request: pb.SubscribeRequest, context: Context) -> None:
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
    async def AckMessages(self, request: pb.AckMessagesRequest, context: Context) -> Any:
        self._check(context, Action.ACK, request.workflow_id, request.agent_id)
        return ack_result_to_pb(await self._store.ack(request.workflow_id, request.agent_id, list(request.message_ids)))

    @_translate
    async def GetWorkflowStatus(self, request: pb.GetWorkflowStatusRequest, context: Context) -> Any:
        self._check(context, Action.STATUS, request.workflow_id)
        return status_to_pb(await settled_status(self._store, request.workflow_id, self._settings.status_settle))

    @_translate
    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> Any:
        self._check(context, Action.STATS)
        return stats_to_pb(await self._store.stats())

    @_translate
    async def DeleteWorkflow(self, request: pb.DeleteWorkflowRequest, context: Context) -> Any:
        self._check(context, Action.DELETE)
        return delete_result_to_pb(await self._store.delete_workflow(request.workflow_id))

    @_translate
    async def RecordRequests(self, request: pb.RecordRequestsRequest, context: Context) -> Any:
        self._check(context, Action.RECORD)
        if len(request.records) > self._settings.max_records_per_batch:
            raise InvalidRequestError(
                f"at most {self._settings.max_records_per_batch} records per call", param="records", code="too_many"
            )
        return record_result_to_pb(await self._store.record([record_from_pb(r) for r in request.records]))
