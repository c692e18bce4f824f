"""FULL_DUPLEX_STREAMED request bodies (how gateways configure an endpoint picker for an InferencePool): a real
Envoy streams the body chunks to the ext_proc server, which answers the headers only once the body is complete,
then sends the (rewritten) body back (docs/gateway-api.md)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from benchmarks.simulator.config import INSTANCE_HEADER
from benchmarks.stack import Stack, envoy_binary
from extproc.config import DESTINATION_ENDPOINT_HEADER, DESTINATION_METADATA_NAMESPACE, METADATA_FIELD
from extproc.envoy_config import main as envoy_config_main
from tests.conftest import stack_options
from tests.e2e.test_routing_e2e import metric

FULL_DUPLEX = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
BODY_LIMIT = 64 * 1024  # the ext_proc server's --max-request-body-bytes in these stacks
CONTEXT = " ".join(f"note {i}: pallet {i} leaves dock {i % 7} at noon." for i in range(60))


def full_duplex_stack(*extproc_args: str, **envoy_extra: object) -> Stack:
    return Stack(stack_options(
        extproc_args=("--max-request-body-bytes", str(BODY_LIMIT), *extproc_args), with_a2a=False,
        envoy_extra={"request_body_mode": "full-duplex", **envoy_extra}))


@pytest.fixture(scope="module")
def gie_stack() -> Iterator[Stack]:
    with full_duplex_stack("--destination-mode", "endpoint", gie=True) as running:
        yield running


@pytest.fixture(scope="module")
def cluster_stack() -> Iterator[Stack]:
    with full_duplex_stack() as running:
        yield running


def completion(workflow_id: str, step: int) -> dict[str, object]:
    return {"model": "m", "prompt": f"{CONTEXT}\nstep {step} of {workflow_id}", "max_tokens": 4,
            METADATA_FIELD: {"workflow_id": workflow_id, "agent_id": f"agent-{step}"}}


async def in_chunks(data: bytes, pieces: int) -> AsyncIterator[bytes]:
    """A chunked upload: each piece is written on its own, so Envoy sees several body chunks."""
    step = -(-len(data) // pieces)
    for start in range(0, len(data), step):
        yield data[start:start + step]
        await asyncio.sleep(0.05)  # lets the piece leave before the next one (no timing is asserted)


def served_by(stack: Stack, response: httpx.Response, gie: bool) -> str:
    """The simulator that answered, checked against where Envoy says it sent the request."""
    name = response.headers[INSTANCE_HEADER]
    assert response.headers["x-served-by"] == (f"127.0.0.1:{stack.backends[name]}" if gie else name)
    return name


async def messages_sent(client: httpx.AsyncClient, stack: Stack) -> int:
    """ProcessingRequests Envoy has sent to the ext_proc filters so far (both filters share the stat)."""
    stats = (await client.get(f"{stack.admin_url}/stats", params={"filter": "ext_proc.stream_msgs_sent"})).text
    return sum(int(line.rpartition(": ")[2]) for line in stats.splitlines() if line.strip())


async def received(stack: Stack, name: str, workflow_id: str) -> list[dict[str, object]]:
    """What the simulator ``name`` received for the workflow (its recorded bodies and headers)."""
    async with httpx.AsyncClient(timeout=10) as client:
        items = (await client.get(f"{stack.simulator_url(name)}/sim/requests",
                                  params={"path": "/v1/completions"})).json()
    return [item for item in items if f"of {workflow_id}" in str(item["body"].get("prompt", ""))]


def assert_forwarded_without_metadata(items: list[dict[str, object]], sent: list[dict[str, object]]) -> None:
    expected = [{k: v for k, v in body.items() if k != METADATA_FIELD} for body in sent]
    assert [item["body"] for item in items] == expected  # the whole body arrived, minus workflow_metadata
    for item in items:
        headers = item["headers"]
        assert isinstance(headers, dict)
        # In this mode Envoy drops content-length and sends the body chunked: no stale length can reach it.
        assert "content-length" not in headers and headers.get("transfer-encoding") == "chunked", headers


# --- the ext_proc stream itself (real gRPC) --------------------------------------------------------------------
def headers_message(path: str, end_of_stream: bool = False) -> pb.ProcessingRequest:
    message = pb.ProcessingRequest()
    for key, value in ((":path", path), (":method", "POST"), ("x-request-id", uuid.uuid4().hex)):
        message.request_headers.headers.headers.append(base_pb2.HeaderValue(key=key, raw_value=value.encode()))
    message.request_headers.end_of_stream = end_of_stream
    message.protocol_config.request_body_mode = FULL_DUPLEX
    message.protocol_config.response_body_mode = FULL_DUPLEX
    return message


def body_messages(data: bytes, pieces: int, end_of_stream: bool = True) -> list[pb.ProcessingRequest]:
    step = -(-len(data) // pieces)
    messages = []
    for start in range(0, len(data), step):
        message = pb.ProcessingRequest()
        message.request_body.body = data[start:start + step]
        message.request_body.end_of_stream = end_of_stream and start + step >= len(data)
        messages.append(message)
    return messages


def exchange(stack: Stack, messages: list[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
    with grpc.insecure_channel(f"127.0.0.1:{stack.extprocs[0].ports['grpc']}") as channel:
        return list(pb_grpc.ExternalProcessorStub(channel).Process(iter(messages), timeout=10))


def test_headers_answer_waits_for_the_body_then_the_body_comes_back(gie_stack: Stack) -> None:
    sent = completion("fd-grpc", 0)
    answers = exchange(gie_stack, [headers_message("/v1/completions"), *body_messages(orjson.dumps(sent), 4)])
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body"]
    common = answers[0].request_headers.response
    assert common.clear_route_cache and not common.HasField("body_mutation")
    headers = {o.header.key: o.header.raw_value.decode() for o in common.header_mutation.set_headers}
    metadata = answers[0].dynamic_metadata.fields[DESTINATION_METADATA_NAMESPACE].struct_value
    assert metadata.fields[DESTINATION_ENDPOINT_HEADER].string_value == headers[DESTINATION_ENDPOINT_HEADER]
    assert headers[DESTINATION_ENDPOINT_HEADER] in {f"127.0.0.1:{port}" for port in gie_stack.backends.values()}
    assert "content-length" not in headers  # Envoy ignores it in this mode
    streamed = answers[1].request_body.response.body_mutation.streamed_response
    assert streamed.end_of_stream
    assert orjson.loads(streamed.body) == {k: v for k, v in sent.items() if k != METADATA_FIELD}


def test_trailers_end_the_body_and_response_chunks_are_echoed(gie_stack: Stack) -> None:
    data = orjson.dumps({"model": "m", "prompt": "hi"})
    trailers = pb.ProcessingRequest()
    trailers.request_trailers.SetInParent()
    response_headers = pb.ProcessingRequest()
    response_headers.response_headers.SetInParent()
    chunks = []
    for index, piece in enumerate((b'{"id": ', b'"x"}')):
        chunk = pb.ProcessingRequest()
        chunk.response_body.body = piece
        chunk.response_body.end_of_stream = index == 1
        chunks.append(chunk)
    answers = exchange(gie_stack, [headers_message("/v1/completions"), *body_messages(data, 2, end_of_stream=False),
                                   trailers, response_headers, *chunks])
    assert [a.WhichOneof("response") for a in answers] == [
        "request_headers", "request_body", "request_trailers", "response_headers", "response_body", "response_body"]
    streamed = answers[1].request_body.response.body_mutation.streamed_response
    assert streamed.body == data and not streamed.end_of_stream  # the trailers still follow
    echoed = [a.response_body.response.body_mutation.streamed_response for a in answers[4:]]
    assert [(e.body, e.end_of_stream) for e in echoed] == [(b'{"id": ', False), (b'"x"}', True)]


def test_body_over_the_limit_is_refused_with_413_naming_it(gie_stack: Stack) -> None:
    answers = exchange(gie_stack, [headers_message("/v1/completions"),
                                   *body_messages(b"x" * (BODY_LIMIT + 1), 3)])
    assert [a.WhichOneof("response") for a in answers] == ["immediate_response"]
    immediate = answers[0].immediate_response
    assert immediate.status.code == 413
    assert str(BODY_LIMIT) in orjson.loads(immediate.body)["error"]["message"]


def test_out_of_order_streams_are_refused_and_the_server_keeps_routing(gie_stack: Stack) -> None:
    response_headers = pb.ProcessingRequest()
    response_headers.response_headers.SetInParent()
    body_first = body_messages(b"{}", 1)[0]
    body_first.protocol_config.request_body_mode = FULL_DUPLEX
    cases = {
        "response-before-the-body-ended": [headers_message("/v1/completions"), *body_messages(b"{", 1, False),
                                           response_headers],
        "body-as-first-message": [body_first],
        "empty-message-mid-body": [headers_message("/v1/completions"), pb.ProcessingRequest()],
    }
    stub_target = f"127.0.0.1:{gie_stack.extprocs[0].ports['grpc']}"
    with grpc.insecure_channel(stub_target) as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        for name, messages in cases.items():
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Process(iter(messages), timeout=10))
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, name
            assert refused.value.details(), name
        # A stream cut before the body ended (client gone) gets no answer and no error.
        assert list(stub.Process(iter([headers_message("/v1/completions"), *body_messages(b"{", 1, False)]),
                                 timeout=10)) == []
    answers = exchange(gie_stack, [headers_message("/v1/completions"), *body_messages(b'{"prompt": "ok"}', 2)])
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body"]
    assert gie_stack.extprocs[0].alive()


# --- through a real Envoy ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["gie", "cluster-header"])
async def test_workflow_lands_on_one_simulator_without_metadata(
    mode: str, gie_stack: Stack, cluster_stack: Stack
) -> None:
    stack, gie = (gie_stack, True) if mode == "gie" else (cluster_stack, False)
    workflow_id = f"fd-{mode}-{uuid.uuid4().hex[:6]}"
    sent = [completion(workflow_id, step) for step in range(4)]
    async with httpx.AsyncClient(timeout=30) as client:
        plain = [await client.post(f"{stack.url}/v1/completions", json=body) for body in sent[:2]]
        before = await messages_sent(client, stack)
        plain.append(await client.post(f"{stack.url}/v1/completions", json=sent[2]))
        between = await messages_sent(client, stack)
        # The last one as a chunked upload in several pieces.
        chunked = await client.post(f"{stack.url}/v1/completions", content=in_chunks(orjson.dumps(sent[3]), 5),
                                    headers={"content-type": "application/json"})
        after = await messages_sent(client, stack)
    responses = [*plain, chunked]
    assert [r.status_code for r in responses] == [200] * 4, responses[-1].text
    # Same request, same response: the extra messages Envoy sent are the upload's extra body chunks.
    assert after - between > between - before, (before, between, after)
    homes = {served_by(stack, r, gie) for r in responses}
    assert len(homes) == 1, homes
    assert chunked.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the warm instance
    home = homes.pop()
    assert_forwarded_without_metadata(await received(stack, home, workflow_id), sent)
    # The observer stream (its own filter, after the router's deferred answer) still sees each request end
    # and its usage.
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(50):  # it ends asynchronously, right after the response; bounded
            text = (await client.get(f"http://127.0.0.1:{stack.extprocs[0].ports['metrics']}/metrics")).text
            if sum(metric(text, "extproc_outstanding_requests", instance=n) for n in stack.simulators) == 0:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("outstanding requests never returned to 0")
    assert metric(text, "extproc_cached_tokens_total", instance=home) > 0


@pytest.mark.parametrize("mode", ["gie", "cluster-header"])
async def test_bad_input_is_a_json_error(mode: str, gie_stack: Stack, cluster_stack: Stack) -> None:
    stack = gie_stack if mode == "gie" else cluster_stack
    async with httpx.AsyncClient(timeout=30) as client:
        broken = await client.post(f"{stack.url}/v1/completions", content=in_chunks(b'{"model": "m", "prompt": ', 3),
                                   headers={"content-type": "application/json"})
        too_big = await client.post(f"{stack.url}/v1/completions", content=in_chunks(b" " * (BODY_LIMIT + 10), 4))
        models = await client.get(f"{stack.url}/v1/models")  # no body: answered on the headers
    assert broken.status_code == 400, broken.text
    assert broken.json()["error"]["code"] == "invalid_json"
    # The ext_proc server's own 413 JSON, not wrapped by a local-reply mapper (in full-duplex mode the generator
    # maps no 413: Envoy buffers nothing, so every 413 is ours).
    assert too_big.status_code == 413, too_big.text
    assert too_big.json()["error"]["code"] == "request_too_large"
    assert str(BODY_LIMIT) in too_big.json()["error"]["message"]
    assert models.status_code == 200 and models.json()["data"]


@pytest.mark.parametrize("args", [["--request-body-mode", "full-duplex"],
                                  ["--gie", "--request-body-mode", "full-duplex"]])
def test_generated_full_duplex_config_is_valid(args: list[str], capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    envoy_config_main(args)
    text = capsys.readouterr().out
    filters = yaml.safe_load(text)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"]
    router = next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")
    mode = router["typed_config"]["processing_mode"]
    assert (mode["request_body_mode"], mode["request_trailer_mode"]) == ("FULL_DUPLEX_STREAMED", "SEND")
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
