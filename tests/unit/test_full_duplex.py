"""Pure pieces of the FULL_DUPLEX_STREAMED path: the 413 error, the answer builders of the handler layer, the
setting and the generator's processing mode (the stream itself is tested in tests/e2e/test_gie_full_duplex_e2e.py)."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.config import DEFAULT_MAX_REQUEST_BODY_BYTES, Settings, settings_from_args
from extproc.envoy_config import ROUTER_FILTER, Endpoint, EnvoyOptions, render
from extproc.errors import BadRequest, BodyTooLarge
from extproc.handlers.messages import apply_plan, echo_response_body
from extproc.requestcontrol.types import RoutePlan


def test_body_too_large_is_a_413_json_error_naming_the_limit() -> None:
    error = BodyTooLarge(12345)
    assert isinstance(error, BadRequest) and error.status == 413
    body = orjson.loads(error.to_json())["error"]
    assert body["code"] == "request_too_large"
    assert "12345 bytes" in body["message"]


@pytest.mark.parametrize("body_in_place", [True, False])
def test_a_rewritten_body_sets_content_length_only_when_it_travels_in_place(body_in_place: bool) -> None:
    # Full duplex: the body goes back in a streamed_response and Envoy sends it chunked, ignoring a
    # content-length mutation, so none is set; buffered: the new length must match or Envoy fails the request.
    plan = RoutePlan("vllm-1", (("x-upstream-cluster", "vllm-1"), ("x-workflow-id", "wf")), body=b'{"a": 1}')
    common = pb.CommonResponse()
    apply_plan(common, plan, body_in_place=body_in_place)
    keys = [o.header.key for o in common.header_mutation.set_headers]
    if body_in_place:
        assert keys == ["x-upstream-cluster", "x-workflow-id", "content-length"]
        assert common.header_mutation.set_headers[2].header.raw_value == b"8"
        assert common.body_mutation.body == b'{"a": 1}'
    else:
        assert keys == ["x-upstream-cluster", "x-workflow-id"]
        assert not common.HasField("body_mutation")
    assert common.clear_route_cache


@pytest.mark.parametrize("end_of_stream", [False, True])
def test_response_chunk_is_echoed_as_a_streamed_response(end_of_stream: bool) -> None:
    chunk = pb.HttpBody(body=b'data: {"x": 1}\n\n', end_of_stream=end_of_stream)
    answer = echo_response_body(chunk)
    assert answer.WhichOneof("response") == "response_body"
    streamed = answer.response_body.response.body_mutation.streamed_response
    assert (streamed.body, streamed.end_of_stream) == (chunk.body, end_of_stream)


def test_max_request_body_bytes_flag_env_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from_args([]).max_request_body_bytes == DEFAULT_MAX_REQUEST_BODY_BYTES
    assert settings_from_args(["--max-request-body-bytes", "2048"]).max_request_body_bytes == 2048
    monkeypatch.setenv("EXTPROC_MAX_REQUEST_BODY_BYTES", "4096")
    assert settings_from_args([]).max_request_body_bytes == 4096
    with pytest.raises(ValueError, match="--max-request-body-bytes"):
        dataclasses.replace(Settings(), max_request_body_bytes=0).validate()


def _router_mode(options: EnvoyOptions) -> dict[str, str]:
    listener = render(options)["static_resources"]["listeners"][0]
    filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    return next(f for f in filters if f["name"] == ROUTER_FILTER)["typed_config"]["processing_mode"]


@pytest.mark.parametrize("gie", [False, True])
@pytest.mark.parametrize(("body_mode", "expected"), [("buffered", ("BUFFERED", "SKIP")),
                                                     ("full-duplex", ("FULL_DUPLEX_STREAMED", "SEND"))])
def test_generator_renders_the_request_body_mode(gie: bool, body_mode: str, expected: tuple[str, str]) -> None:
    options = EnvoyOptions(backends=(("vllm-1", Endpoint("10.0.0.1", 8000)),), gie=gie, request_body_mode=body_mode)
    mode = _router_mode(options)
    assert (mode["request_body_mode"], mode["request_trailer_mode"]) == expected
    assert mode["request_header_mode"] == "SEND"
