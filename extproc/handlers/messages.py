"""Builders of ext_proc protobuf answers from the director's plain route plans (upb messages, built in place)."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from extproc.config import DESTINATION_ENDPOINT_HEADER, DESTINATION_METADATA_NAMESPACE
from extproc.errors import BadRequest
from extproc.requestcontrol.types import RoutePlan

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def header_map(headers: pb.HttpHeaders, wanted: frozenset[str]) -> dict[str, str]:
    """The wanted headers of a headers message (values travel in ``raw_value``; ``value`` as a fallback)."""
    found: dict[str, str] = {}
    for header in headers.headers.headers:
        key = header.key
        if key in wanted:
            raw = header.raw_value
            found[key] = raw.decode("utf-8", "replace") if raw else header.value
    return found


def immediate(error: BadRequest) -> pb.ProcessingResponse:
    """A local reply: Envoy answers the client with the error's status and JSON body."""
    response = pb.ProcessingResponse()
    answer = response.immediate_response
    answer.status.code = error.status
    answer.body = error.to_json()
    answer.details = error.code
    option = answer.headers.set_headers.add()
    option.header.key = "content-type"
    option.header.raw_value = b"application/json"
    option.append_action = OVERWRITE
    return response


def set_header(mutation: pb.HeaderMutation, key: str, value: str) -> None:
    option = mutation.set_headers.add()
    option.header.key = key
    option.header.raw_value = value.encode()  # raw_value only: setting value too is an Envoy error
    option.append_action = OVERWRITE


def destination(address: str) -> tuple[base_pb2.HeaderValueOption, struct_pb2.Struct]:
    """The endpoint-picker answer for one ``ip:port``: the header option and the ``envoy.lb`` metadata (the
    protocol forbids the two to differ)."""
    option = base_pb2.HeaderValueOption(append_action=OVERWRITE)
    option.header.key = DESTINATION_ENDPOINT_HEADER
    option.header.raw_value = address.encode()
    metadata = struct_pb2.Struct()
    metadata.fields[DESTINATION_METADATA_NAMESPACE].struct_value.fields[DESTINATION_ENDPOINT_HEADER].string_value = (
        address)
    return option, metadata


class Destinations:
    """Each instance's endpoint-picker header option and metadata, built once per address."""

    def __init__(self) -> None:
        self._built: dict[str, tuple[base_pb2.HeaderValueOption, struct_pb2.Struct]] = {}

    def apply(self, response: pb.ProcessingResponse, common: pb.CommonResponse, address: str) -> None:
        built = self._built.get(address)
        if built is None:
            built = self._built[address] = destination(address)
        option, metadata = built
        common.header_mutation.set_headers.append(option)
        response.dynamic_metadata.CopyFrom(metadata)


def apply_plan(common: pb.CommonResponse, plan: RoutePlan, *, body_in_place: bool) -> None:
    """Headers to set and ``clear_route_cache`` (Envoy re-selects the route); with ``body_in_place`` (buffered
    mode) a rewritten body travels here too, with its new ``content-length`` (Envoy keeps the old one
    otherwise and fails the request). In full-duplex mode the body goes in the body answer instead and Envoy
    sends it chunked, ignoring a content-length mutation, so none is set."""
    mutation = common.header_mutation
    for key, value in plan.headers:
        set_header(mutation, key, value)
    if plan.body is not None and body_in_place:
        common.body_mutation.body = plan.body
        set_header(mutation, "content-length", str(len(plan.body)))
    common.clear_route_cache = True


def echo_response_body(body: pb.HttpBody) -> pb.ProcessingResponse:
    """A full-duplex response chunk goes back unchanged: Envoy forwards only what the server returns."""
    response = pb.ProcessingResponse()
    streamed = response.response_body.response.body_mutation.streamed_response
    streamed.body = body.body
    streamed.end_of_stream = body.end_of_stream
    return response
