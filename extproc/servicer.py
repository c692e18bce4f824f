"""The ext_proc gRPC servicer: a thin adapter between Envoy's ProcessingRequest streams and the routing core.

Envoy runs two ext_proc filters against this server, each opening one stream per HTTP request:

- the **router** stream (request headers + buffered body; Envoy waits for each answer). Requests without a
  body are routed on their headers; the others when their body arrives (parsed once). The answer sets the
  cluster header and ``clear_route_cache`` so Envoy re-selects the route, and may replace the body with
  ``workflow_metadata`` stripped (fixing ``content-length``).
- the **observer** stream (``observability_mode``: Envoy does not wait, so it adds no latency). It sees the
  request headers the router set and the response, which tell when the request finished and its ``usage``.

A router stream whose filter runs ``FULL_DUPLEX_STREAMED`` (Envoy says so in the first message's
``protocol_config``; gateways configure it for an InferencePool) takes a separate path, ``_full_duplex``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from a2a_service.tracecontext import parse_traceparent
from extproc.config import (
    AGENT_ID_HEADER,
    DESTINATION_ENDPOINT_HEADER,
    DESTINATION_METADATA_NAMESPACE,
    FAILURES_TO_MARK_DOWN,
    LLM_PATHS,
    PASSIVE_HOLD_DOWN_S,
    ROUTE_ID_HEADER,
    SERVED_BY_HEADER,
    TRACEPARENT_HEADER,
    WORKFLOW_ID_HEADER,
    Settings,
    destination_endpoints,
)
from extproc.errors import BadRequest, BodyTooLarge
from extproc.metadata import RoutingInput, WorkflowMetadata, metadata_from_headers, parse_llm_body
from extproc.metrics import Metrics
from extproc.reporting import Reporter
from extproc.routing.inflight import InFlight
from extproc.routing.policy import Decision, Router
from extproc.routing.prefix import block_hashes

if TYPE_CHECKING:
    from extproc.kv_index.lmcache import LMCacheIndex
    from extproc.registry import RedisRegistry
from extproc.usage import TailBuffer, extract_usage

log = logging.getLogger("extproc")

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OBSERVED_RESPONSE = frozenset({":status", SERVED_BY_HEADER})
_FULL_DUPLEX = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED


class _EmptyMessage(Exception):
    """A ProcessingRequest with none of its ``request`` oneof set: the stream is refused (INVALID_ARGUMENT)."""


class _OutOfOrder(Exception):
    """A full-duplex message Envoy cannot send before the request body ended: the stream is refused."""


class _Stream:
    """Per-stream state of either kind of stream."""

    __slots__ = ("agent_id", "header_metadata", "instance", "path", "request_id", "route_id", "served_by",
                 "status", "tail", "traceparent", "workflow_id")

    def __init__(self) -> None:
        self.path = ""
        self.request_id = ""
        self.traceparent: str | None = None  # the client's, parsed only when a log line needs its ids
        self.header_metadata: WorkflowMetadata | None = None
        self.instance: str | None = None
        self.route_id: str | None = None
        # observer only
        self.workflow_id: str | None = None
        self.agent_id: str | None = None
        self.status = 0
        self.served_by: str | None = None  # the cluster whose host answered (differs after a retry elsewhere)
        self.tail: TailBuffer | None = None


def _header_map(headers: pb.HttpHeaders, wanted: frozenset[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for header in headers.headers.headers:
        key = header.key
        if key in wanted:
            raw = header.raw_value
            found[key] = raw.decode("utf-8", "replace") if raw else header.value
    return found


def _immediate(error: BadRequest) -> pb.ProcessingResponse:
    response = pb.ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = error.status
    immediate.body = error.to_json()
    immediate.details = error.code
    option = immediate.headers.set_headers.add()
    option.header.key = "content-type"
    option.header.raw_value = b"application/json"
    option.append_action = _OVERWRITE
    return response


def _set(mutation: pb.HeaderMutation, key: str, value: str) -> None:
    option = mutation.set_headers.add()
    option.header.key = key
    option.header.raw_value = value.encode()
    option.append_action = _OVERWRITE


def _trace_fields(stream: _Stream) -> dict[str, str]:
    trace = parse_traceparent(stream.traceparent) if stream.traceparent is not None else None
    return trace.log_fields() if trace is not None else {}


def _destination(address: str) -> tuple[base_pb2.HeaderValueOption, struct_pb2.Struct]:
    option = base_pb2.HeaderValueOption(append_action=_OVERWRITE)
    option.header.key = DESTINATION_ENDPOINT_HEADER
    option.header.raw_value = address.encode()
    metadata = struct_pb2.Struct()
    metadata.fields[DESTINATION_METADATA_NAMESPACE].struct_value.fields[DESTINATION_ENDPOINT_HEADER].string_value = (
        address)
    return option, metadata


def _drop_header(mutation: pb.HeaderMutation, key: str) -> None:
    kept = [option for option in mutation.set_headers if option.header.key != key]
    del mutation.set_headers[:]
    mutation.set_headers.extend(kept)


def _echo_response_body(body: pb.HttpBody) -> pb.ProcessingResponse:
    """A full-duplex response chunk goes back unchanged: Envoy forwards only what the server returns."""
    response = pb.ProcessingResponse()
    streamed = response.response_body.response.body_mutation.streamed_response
    streamed.body = body.body
    streamed.end_of_stream = body.end_of_stream
    return response


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):
    def __init__(
        self,
        settings: Settings,
        router: Router,
        inflight: InFlight,
        metrics: Metrics,
        reporter: Reporter,
        clock: Callable[[], float] = time.monotonic,
        registry: RedisRegistry | None = None,
        kv_index: LMCacheIndex | None = None,
    ) -> None:
        self.kv_index = kv_index
        self.router = router
        self.registry = registry
        self._background: set[asyncio.Task[None]] = set()
        # Claims in flight per workflow: its other requests wait for the agreed instance instead of taking this
        # replica's provisional choice as an affinity hit.
        self._claiming: dict[str, asyncio.Future[str]] = {}
        self.inflight = inflight
        self.metrics = metrics
        self.reporter = reporter
        self.clock = clock
        self.strip_metadata = not settings.keep_workflow_metadata
        self.cluster_header = settings.cluster_header
        self.prefix_routing = settings.prefix_routing
        self.max_request_body_bytes = settings.max_request_body_bytes
        # Endpoint-picker mode: each instance's header option and envoy.lb metadata, built once.
        self.destinations: dict[str, tuple[base_pb2.HeaderValueOption, struct_pb2.Struct]] | None = None
        if settings.destination_mode == "endpoint":
            self.destinations = {name: _destination(address)
                                 for name, address in destination_endpoints(settings.backends).items()}
        # Consecutive gateway failures per instance (passive health checking between polls).
        self.failures: dict[str, int] = dict.fromkeys(router.instances, 0)
        self._router_headers = frozenset(
            {":path", WORKFLOW_ID_HEADER, AGENT_ID_HEADER, "x-request-id", TRACEPARENT_HEADER}
        )
        self._observer_headers = frozenset(
            {ROUTE_ID_HEADER, settings.cluster_header, WORKFLOW_ID_HEADER, AGENT_ID_HEADER, "x-request-id"}
        )

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        self.metrics.streams.inc()
        stream = _Stream()
        first = True  # Envoy sends protocol_config with a stream's first message only
        try:
            async for message in request_iterator:
                if message.observability_mode:
                    self.observe(message, stream)  # Envoy expects no answer
                elif first and message.protocol_config.request_body_mode == _FULL_DUPLEX:
                    async for response in self._full_duplex(message, request_iterator, stream):
                        yield response
                    return
                else:
                    yield await self.handle(message, stream)
                first = False
        except _EmptyMessage:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ProcessingRequest has no request field set")
        except _OutOfOrder as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except DecodeError as error:  # grpc.aio decodes lazily, inside our iteration of the stream
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a valid ProcessingRequest: {error}")
        except Exception:
            self.metrics.stream_errors.inc()
            log.exception("ext_proc stream failed", extra=_trace_fields(stream))
            raise
        finally:
            if stream.tail is not None:  # observer stream cut before the response ended (client reset)
                self._finish(stream)

    # --- router stream -------------------------------------------------------------------------------------
    async def handle(self, message: pb.ProcessingRequest, stream: _Stream) -> pb.ProcessingResponse:
        """Answer one router-stream message. Suspends only to agree on a new or moved workflow in Redis."""
        kind = message.WhichOneof("request")
        if kind == "request_headers":
            return await self._on_headers(message.request_headers, stream)
        if kind == "request_body":
            return await self._on_body(message.request_body, stream)
        if kind is None:
            raise _EmptyMessage
        # Not configured to be sent (trailers, responses): answer with an empty response of the same kind.
        response = pb.ProcessingResponse()
        getattr(response, kind).SetInParent()
        return response

    async def _on_headers(self, headers: pb.HttpHeaders, stream: _Stream) -> pb.ProcessingResponse:
        started = time.perf_counter()
        found = _header_map(headers, self._router_headers)
        stream.path = found.get(":path", "").partition("?")[0]
        stream.request_id = found.get("x-request-id", "")
        stream.traceparent = found.get(TRACEPARENT_HEADER)  # never invented here (docs/troubleshooting.md)
        try:
            stream.header_metadata = metadata_from_headers(
                found.get(WORKFLOW_ID_HEADER), found.get(AGENT_ID_HEADER)
            )
        except BadRequest as error:
            return self._refuse(error, stream)
        response = pb.ProcessingResponse()
        response.request_headers.SetInParent()  # upb: reading a sub-message does not set the oneof
        if headers.end_of_stream:
            # No body will follow (GET, empty POST): route on the headers alone.
            await self._route(response.request_headers.response, RoutingInput(stream.header_metadata), stream,
                              started)
            if self.destinations is not None:
                self._set_destination(response, response.request_headers.response, stream)
        return response

    async def _on_body(self, body: pb.HttpBody, stream: _Stream) -> pb.ProcessingResponse:
        started = time.perf_counter()
        response = pb.ProcessingResponse()
        response.request_body.SetInParent()
        if stream.instance is not None:
            return response  # already routed (defensive: BUFFERED sends one body message)
        if stream.path in LLM_PATHS:
            try:
                routing = parse_llm_body(body.body, stream.header_metadata, strip_metadata=self.strip_metadata)
            except BadRequest as error:
                return self._refuse(error, stream)
        else:
            routing = RoutingInput(stream.header_metadata)
        await self._route(response.request_body.response, routing, stream, started)
        if self.destinations is not None:
            self._set_destination(response, response.request_body.response, stream)
        return response

    # --- router stream, FULL_DUPLEX_STREAMED request body ----------------------------------------------------
    async def _full_duplex(
        self, first: pb.ProcessingRequest, messages: AsyncIterator[pb.ProcessingRequest], stream: _Stream
    ) -> AsyncIterator[pb.ProcessingResponse]:
        """Envoy streams the body chunks without waiting for the headers answer, and forwards only the body the
        server sends back. The decision needs the whole body, so the headers answer (cluster/destination
        headers, ``envoy.lb`` metadata, ``clear_route_cache``) waits until the body ended; then the body goes
        back in a ``streamed_response``. Envoy requires that order: headers, body, trailers."""
        if first.WhichOneof("request") != "request_headers":
            raise _OutOfOrder("a full-duplex stream must start with request_headers")
        headers = first.request_headers
        answer = await self._on_headers(headers, stream)
        if headers.end_of_stream or answer.HasField("immediate_response"):
            yield answer  # no body follows (routed on the headers, as in the buffered mode), or refused
            if answer.HasField("immediate_response"):
                return
        else:
            body = bytearray()
            async for message in messages:
                kind = message.WhichOneof("request")
                if kind == "request_body":
                    chunk = message.request_body
                    if len(body) + len(chunk.body) > self.max_request_body_bytes:
                        yield self._refuse(BodyTooLarge(self.max_request_body_bytes), stream)
                        return
                    body += chunk.body
                    if not chunk.end_of_stream:
                        continue
                elif kind == "request_trailers":
                    pass  # the request ends with trailers instead of a body end_of_stream
                elif kind is None:
                    raise _EmptyMessage
                else:
                    raise _OutOfOrder(f"{kind} before the request body ended")
                for response in await self._answer_full_duplex(answer, bytes(body), stream, kind == "request_trailers"):
                    yield response
                    if response.HasField("immediate_response"):
                        return
                break
            else:
                return  # the stream ended before the body did (client gone): nothing to answer
        response_mode = first.protocol_config.response_body_mode
        async for message in messages:  # the response side, when the gateway's filter sends it
            if response_mode == _FULL_DUPLEX and message.WhichOneof("request") == "response_body":
                yield _echo_response_body(message.response_body)
            else:
                yield await self.handle(message, stream)

    async def _answer_full_duplex(
        self, answer: pb.ProcessingResponse, body: bytes, stream: _Stream, trailers: bool
    ) -> list[pb.ProcessingResponse]:
        started = time.perf_counter()
        if stream.path in LLM_PATHS:
            try:
                routing = parse_llm_body(body, stream.header_metadata, strip_metadata=self.strip_metadata)
            except BadRequest as error:
                return [self._refuse(error, stream)]
        else:
            routing = RoutingInput(stream.header_metadata)
        common = answer.request_headers.response
        await self._route(common, routing, stream, started)
        if routing.rewritten_body is not None:
            body = routing.rewritten_body
            common.ClearField("body_mutation")  # travels in the body answer, not the headers answer
            # In this mode Envoy drops content-length and ignores a mutation of it (the body goes upstream
            # chunked), so the one _route set is left out rather than sent in vain.
            _drop_header(common.header_mutation, "content-length")
        if self.destinations is not None:
            self._set_destination(answer, common, stream)
        reply = pb.ProcessingResponse()
        streamed = reply.request_body.response.body_mutation.streamed_response
        streamed.body = body
        streamed.end_of_stream = not trailers
        if not trailers:
            return [answer, reply]
        ended = pb.ProcessingResponse()
        ended.request_trailers.SetInParent()
        return [answer, reply, ended]

    def _refuse(self, error: BadRequest, stream: _Stream) -> pb.ProcessingResponse:
        """Answer a bad request with its 4xx (Envoy sends it to the client; nothing reaches a backend)."""
        self.metrics.bad_request(error.code)
        log.info("bad request", extra={"status": error.status, "code": error.code, "param": error.param,
                                       "path": stream.path, "request_id": stream.request_id,
                                       **_trace_fields(stream)})
        return _immediate(error)

    async def _route(
        self, common: pb.CommonResponse, routing: RoutingInput, stream: _Stream, started: float
    ) -> None:
        metadata = routing.metadata
        now = self.clock()
        blocks = block_hashes(routing.prompt_text) if self.prefix_routing and routing.prompt_text else ()
        cached = await self._kv_lookup(routing) if self.kv_index is not None and routing.prompt_text else None
        decision = self.router.route(metadata, now, blocks, cached)
        if self.registry is not None and decision.workflow_id is not None:
            decision = await self._agree(decision, now)
        instance = decision.instance
        stream.instance = instance
        route_id = stream.route_id = self.inflight.start(instance, now)
        mutation = common.header_mutation
        _set(mutation, self.cluster_header, instance)
        _set(mutation, ROUTE_ID_HEADER, route_id)
        if decision.workflow_id is not None and metadata is not None:
            # The observer stream (and the backend's logs) learn the workflow from these headers.
            _set(mutation, WORKFLOW_ID_HEADER, decision.workflow_id)
            if metadata.agent_id is not None:
                _set(mutation, AGENT_ID_HEADER, metadata.agent_id)
        if routing.rewritten_body is not None:
            common.body_mutation.body = routing.rewritten_body
            _set(mutation, "content-length", str(len(routing.rewritten_body)))
        common.clear_route_cache = True
        elapsed = time.perf_counter() - started
        self._account(decision, metadata, stream, elapsed)

    def _set_destination(self, response: pb.ProcessingResponse, common: pb.CommonResponse, stream: _Stream) -> None:
        """The endpoint-picker answer: the same ip:port in the header and in ``envoy.lb`` dynamic metadata (the
        protocol forbids the two to differ). The cluster header stays set: the observer stream reads it."""
        assert self.destinations is not None and stream.instance is not None
        option, metadata = self.destinations[stream.instance]
        common.header_mutation.set_headers.append(option)
        response.dynamic_metadata.CopyFrom(metadata)

    async def _kv_lookup(self, routing: RoutingInput) -> dict[str, float] | None:
        """Share of the prompt each instance holds, per the LMCache controller (None: use the local index)."""
        index = self.kv_index
        assert index is not None
        text = routing.prompt_text
        if routing.messages is not None:
            from benchmarks.simulator.tokenizer import apply_chat_template

            text = apply_chat_template(routing.messages)  # the backend tokenizes the templated chat
        tokens = index.tokenizer(text)
        matches = await index.lookup_tokens(tokens)  # never raises; {} on error or timeout (counted)
        if not matches or not tokens:
            return None
        return {instance: min(1.0, matched / len(tokens)) for instance, matched in matches.items()}

    # --- shared registry (several replicas) ----------------------------------------------------------------
    async def _agree(self, decision: Decision, now: float) -> Decision:
        registry = self.registry
        assert registry is not None and decision.workflow_id is not None
        workflow_id = decision.workflow_id
        registry.touch(workflow_id)
        entry = self.router.table.peek(workflow_id)
        if entry is None:  # evicted from the local table by this very decision (max-workflows of 1)
            return decision
        pending = self._claiming.get(workflow_id)
        if pending is not None:
            winner = await asyncio.shield(pending)
            if winner == decision.instance:
                return decision
            return dataclasses.replace(decision, instance=winner, affinity_hit=True, new_workflow=False,
                                       failover=False, rebalanced=False, previous=None)
        if decision.affinity_hit:
            if now - entry.synced_at > registry.revalidate_after:
                entry.synced_at = now
                self._spawn(self._revalidate(workflow_id))
            return decision
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._claiming[workflow_id] = future
        winner = decision.instance  # what waiters get if this stream is cancelled mid-claim
        try:
            winner = await registry.claim(workflow_id, decision.instance, decision.previous)
            if winner != decision.instance and winner not in self.router.healthy:
                # Another replica chose an instance this one sees as down: move it, once, atomically.
                winner = await registry.claim(workflow_id, decision.instance, winner)
        finally:
            del self._claiming[workflow_id]
            future.set_result(winner)
        entry.synced_at = now
        if winner == decision.instance:
            return decision
        entry.instance = winner  # another replica decided first: follow it (cluster-wide affinity)
        return dataclasses.replace(decision, instance=winner, affinity_hit=True, new_workflow=False,
                                   failover=False, rebalanced=False, previous=None)

    async def _revalidate(self, workflow_id: str) -> None:
        assert self.registry is not None
        entry = self.router.table.peek(workflow_id)
        if entry is None:
            return
        current = await self.registry.lookup(workflow_id)
        if current is None and self.registry.available:
            # Expired or evicted cluster-wide while this replica kept using it: register it again.
            current = await self.registry.claim(workflow_id, entry.instance, None)
        if current is not None and current != entry.instance and current in self.router.healthy:
            entry.instance = current

    def _spawn(self, coroutine: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _account(self, decision: Decision, metadata: WorkflowMetadata | None, stream: _Stream, elapsed: float) -> None:
        metrics = self.metrics
        metrics.routing_latency.observe(elapsed)
        if decision.workflow_id is None:
            reason = "prefix" if decision.prefix_blocks else "no_metadata"
        else:
            metrics.total_requests.inc()
            reason = ("affinity" if decision.affinity_hit else "failover" if decision.failover
                      else "rebalance" if decision.rebalanced else "new_workflow")
            self.reporter.routed(stream.request_id, decision, metadata, elapsed)
        metrics.decisions[decision.instance, reason].inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "routed",
                extra={"instance": decision.instance, "reason": reason, "workflow_id": decision.workflow_id,
                       "path": stream.path, "routing_us": round(elapsed * 1e6, 1), **_trace_fields(stream)},
            )

    # --- observer stream -----------------------------------------------------------------------------------
    def observe(self, message: pb.ProcessingRequest, stream: _Stream) -> None:
        kind = message.WhichOneof("request")
        if kind == "request_headers":
            found = _header_map(message.request_headers, self._observer_headers)
            stream.route_id = found.get(ROUTE_ID_HEADER)
            if stream.route_id is not None:
                self.inflight.observe(stream.route_id)
            stream.instance = found.get(self.cluster_header)
            stream.workflow_id = found.get(WORKFLOW_ID_HEADER)
            stream.agent_id = found.get(AGENT_ID_HEADER)
            stream.request_id = found.get("x-request-id", "")
            stream.tail = TailBuffer()
        elif kind == "response_headers" and stream.tail is not None:
            found = _header_map(message.response_headers, _OBSERVED_RESPONSE)
            status = found.get(":status", "0")
            stream.status = int(status) if status.isdigit() else 0
            stream.served_by = found.get(SERVED_BY_HEADER)
            if message.response_headers.end_of_stream:
                self._finish(stream)
        elif kind == "response_body" and stream.tail is not None:
            stream.tail.feed(message.response_body.body)
            if message.response_body.end_of_stream:
                # Envoy closes observer streams lazily: the response's end is the request's end.
                self._finish(stream)

    def _passive_health(self, instance: str, status: int, retried_away: bool) -> None:
        """Failed attempts the poller cannot see: gateway errors, and attempts Envoy gave up on and retried on
        another instance (refused, reset, or a per-try idle timeout: a hung engine whose /health still answers)."""
        if status in (502, 503, 504) or retried_away:
            self.failures[instance] += 1
            if self.failures[instance] >= FAILURES_TO_MARK_DOWN:  # every further failure extends the hold
                if self.failures[instance] == FAILURES_TO_MARK_DOWN:
                    log.warning("instance marked down after failed attempts",
                                extra={"instance": instance, "hold_down_s": PASSIVE_HOLD_DOWN_S})
                self.router.hold_down(instance, time.monotonic() + PASSIVE_HOLD_DOWN_S)
        elif status:
            self.failures[instance] = 0

    def _finish(self, stream: _Stream) -> None:
        if stream.route_id is not None:
            self.inflight.finish(stream.route_id)
        assert stream.tail is not None
        usage = extract_usage(stream.tail.data) if stream.status == 200 else None
        stream.tail = None
        instance = stream.instance or ""
        served = stream.served_by
        # In endpoint-picker mode x-served-by is an ip:port, not a cluster name: no retry signal there.
        retried_away = served is not None and served != instance and self.destinations is None
        if instance in self.failures:
            self._passive_health(instance, stream.status, retried_away)
        if usage is not None:
            self.metrics.usage(served if retried_away and served in self.failures else instance, usage)
        if stream.workflow_id is not None:
            self.reporter.completed(
                stream.request_id, stream.workflow_id, stream.agent_id, instance, usage, stream.status
            )
