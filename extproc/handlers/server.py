"""The ext_proc gRPC servicer: the only layer that speaks Envoy's ProcessingRequest/ProcessingResponse.

Envoy runs two ext_proc filters against this server, each opening one stream per HTTP request:

- the **router** stream (request headers + buffered body; Envoy waits for each answer). Requests without a
  body are routed on their headers; the others when their body arrives. The answer sets the cluster header and
  ``clear_route_cache`` so Envoy re-selects the route, and may replace the body (``workflow_metadata``
  stripped, ``content-length`` fixed).
- the **observer** stream (``observability_mode``: Envoy does not wait, so it adds no latency). It sees the
  request headers the router set and the response, which tell when the request finished and its ``usage``.

A router stream whose filter runs ``FULL_DUPLEX_STREAMED`` (Envoy says so in the first message's
``protocol_config``; gateways configure it for an InferencePool) takes a separate path, ``_full_duplex``.
Every decision is the director's: this layer turns messages into plain facts and plans into messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf.message import DecodeError

from extproc.config import SERVED_BY_HEADER
from extproc.errors import BadRequest, BodyTooLarge
from extproc.handlers.messages import Destinations, apply_plan, echo_response_body, header_map, immediate
from extproc.metrics import Metrics
from extproc.requestcontrol.director import Director, trace_fields
from extproc.requestcontrol.types import Request, Response
from extproc.usage import TailBuffer

log = logging.getLogger("extproc")

_OBSERVED_RESPONSE = frozenset({":status", SERVED_BY_HEADER})
_FULL_DUPLEX = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED


class _EmptyMessage(Exception):
    """A ProcessingRequest with none of its ``request`` oneof set: the stream is refused (INVALID_ARGUMENT)."""


class _OutOfOrder(Exception):
    """A full-duplex message Envoy cannot send before the request body ended: the stream is refused."""


class Stream:
    """Per-stream state of either kind of stream."""

    __slots__ = ("request", "response", "tail")

    def __init__(self) -> None:
        self.request: Request | None = None  # router stream
        self.response: Response | None = None  # observer stream
        self.tail: TailBuffer | None = None  # observer stream, until the response ends


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]  # untyped generated base
    def __init__(self, director: Director, metrics: Metrics, max_request_body_bytes: int) -> None:
        self.director = director
        self.metrics = metrics
        self.max_request_body_bytes = max_request_body_bytes
        self.destinations = Destinations()

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext[
            pb.ProcessingRequest, pb.ProcessingResponse]
    ) -> AsyncIterator[pb.ProcessingResponse]:
        self.metrics.streams.inc()
        stream = Stream()
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
            log.exception("ext_proc stream failed",
                          extra=trace_fields(stream.request.traceparent if stream.request else None))
            raise
        finally:
            if stream.tail is not None:  # observer stream cut before the response ended (client reset)
                self._finish(stream)
            elif stream.request is not None and stream.request.route_id is not None:
                # A router stream ends with its HTTP stream: the end of a stream whose body nobody reads.
                self.director.router_ended(stream.request.route_id)

    # --- router stream -------------------------------------------------------------------------------------
    async def handle(self, message: pb.ProcessingRequest, stream: Stream) -> pb.ProcessingResponse:
        """Answer one router-stream message."""
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

    async def _on_headers(self, headers: pb.HttpHeaders, stream: Stream) -> pb.ProcessingResponse:
        started = time.perf_counter()
        director = self.director
        try:
            request = stream.request = director.start(header_map(headers, director.router_headers))
        except BadRequest as error:
            return immediate(error)
        response = pb.ProcessingResponse()
        response.request_headers.SetInParent()  # upb: reading a sub-message does not set the oneof
        if headers.end_of_stream:
            # No body will follow (GET, empty POST): route on the headers alone.
            plan = await director.route(request, director.parse(request, None), started)
            common = response.request_headers.response
            apply_plan(common, plan, body_in_place=True)
            if plan.destination is not None:
                self.destinations.apply(response, common, plan.destination)
        return response

    async def _on_body(self, body: pb.HttpBody, stream: Stream) -> pb.ProcessingResponse:
        started = time.perf_counter()
        response = pb.ProcessingResponse()
        response.request_body.SetInParent()
        request = stream.request
        if request is None:  # a body without headers: routed as a request to an unknown path
            request = stream.request = self.director.start({})
        if request.instance is not None:
            return response  # already routed (defensive: BUFFERED sends one body message)
        try:
            routing = self.director.parse(request, body.body)
            plan = await self.director.route(request, routing, started)
        except BadRequest as error:  # also a previous response whose instance is gone
            return immediate(error)
        common = response.request_body.response
        apply_plan(common, plan, body_in_place=True)
        if plan.destination is not None:
            self.destinations.apply(response, common, plan.destination)
        return response

    # --- router stream, FULL_DUPLEX_STREAMED request body ----------------------------------------------------
    async def _full_duplex(
        self, first: pb.ProcessingRequest, messages: AsyncIterator[pb.ProcessingRequest], stream: Stream
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
                        assert stream.request is not None
                        error = BodyTooLarge(self.max_request_body_bytes)
                        self.director.refused(stream.request, error)
                        yield immediate(error)
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
                yield echo_response_body(message.response_body)
            else:
                yield await self.handle(message, stream)

    async def _answer_full_duplex(
        self, answer: pb.ProcessingResponse, body: bytes, stream: Stream, trailers: bool
    ) -> list[pb.ProcessingResponse]:
        started = time.perf_counter()
        request = stream.request
        assert request is not None
        try:
            routing = self.director.parse(request, body)
            plan = await self.director.route(request, routing, started)
        except BadRequest as error:  # also a previous response whose instance is gone
            return [immediate(error)]
        common = answer.request_headers.response
        apply_plan(common, plan, body_in_place=False)
        if plan.destination is not None:
            self.destinations.apply(answer, common, plan.destination)
        reply = pb.ProcessingResponse()
        streamed = reply.request_body.response.body_mutation.streamed_response
        streamed.body = plan.body if plan.body is not None else body
        streamed.end_of_stream = not trailers
        if not trailers:
            return [answer, reply]
        ended = pb.ProcessingResponse()
        ended.request_trailers.SetInParent()
        return [answer, reply, ended]

    # --- observer stream -----------------------------------------------------------------------------------
    def observe(self, message: pb.ProcessingRequest, stream: Stream) -> None:
        observation = self.director.stream_observation
        observation.messages.inc()
        kind = message.WhichOneof("request")
        if kind == "request_headers":
            director = self.director
            observation.streams.inc()
            stream.response = director.observed(header_map(message.request_headers, director.observer_headers))
            stream.tail = TailBuffer()
        elif kind == "response_headers" and stream.tail is not None:
            assert stream.response is not None
            found = header_map(message.response_headers, _OBSERVED_RESPONSE)
            status = found.get(":status", "0")
            stream.response.status = int(status) if status.isdigit() else 0
            stream.response.served_by = found.get(SERVED_BY_HEADER)
            if message.response_headers.end_of_stream:
                self._finish(stream)
            elif not stream.response.body_read:
                # No body comes (a stream's route: stream_observation.py): its headers are the response's start;
                # its end is its router stream's end (Director.router_ended), which may already have come.
                self.director.response_started(stream.response)
                if self.director.bodyless_headers(stream.response):
                    stream.tail = None
        elif kind == "response_body" and stream.tail is not None:
            if not stream.tail.data:
                assert stream.response is not None
                self.director.response_started(stream.response, message.response_body.body)
            stream.tail.feed(message.response_body.body)
            if message.response_body.end_of_stream:
                # Envoy closes observer streams lazily: the response's end is the request's end.
                self._finish(stream)

    def _finish(self, stream: Stream) -> None:
        tail, response = stream.tail, stream.response
        stream.tail = None
        assert tail is not None and response is not None
        if not response.done:  # an unread stream may have been completed by its router stream's end
            self.director.completed(response, tail.data)
