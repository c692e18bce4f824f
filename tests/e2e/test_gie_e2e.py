"""Gateway API Inference Extension mode: the ext_proc server answers like an endpoint picker (ip:port in
``x-gateway-destination-endpoint`` and in ``envoy.lb`` dynamic metadata) and a real Envoy routes the request
through an ORIGINAL_DST cluster (docs/gateway-api.md)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from benchmarks.simulator.config import INSTANCE_HEADER
from benchmarks.stack import Stack, envoy_binary
from extproc.config import DESTINATION_ENDPOINT_HEADER, DESTINATION_METADATA_NAMESPACE
from extproc.envoy_config import main as envoy_config_main
from tests.conftest import stack_options

REPO = Path(__file__).resolve().parents[2]
CONTEXT = " ".join(f"note {i}: shipment {i} arrives on day {i % 11}." for i in range(60))


def check_example(capsys: pytest.CaptureFixture[str], path: Path, args: list[str]) -> None:
    """The committed example equals the generator's output for ``args`` and passes ``envoy --mode validate``."""
    envoy_config_main(args)
    regenerate = f"python -m extproc.envoy_config {' '.join(args)} > {path}"
    assert capsys.readouterr().out == (REPO / path).read_text(), f"regenerate it: {regenerate}"
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def gie_stack() -> Iterator[Stack]:
    options = stack_options(extproc_args=("--destination-mode", "endpoint"), envoy_extra={"gie": True})
    with Stack(options) as running:
        yield running


def served_by(stack: Stack, response: httpx.Response) -> str:
    """The simulator that answered, checked against the address Envoy connected to."""
    name = response.headers[INSTANCE_HEADER]
    assert response.headers["x-served-by"] == f"127.0.0.1:{stack.backends[name]}"
    return name


def completion(workflow_id: str, step: int) -> dict[str, object]:
    return {"model": "m", "prompt": f"{CONTEXT}\nstep {step}", "max_tokens": 4,
            "workflow_metadata": {"workflow_id": workflow_id, "agent_id": f"agent-{step}"}}


def test_picker_answers_with_header_and_envoy_lb_metadata(gie_stack: Stack) -> None:
    request_headers = pb.ProcessingRequest()
    for key, value in ((":path", "/v1/completions"), (":method", "POST"), ("x-request-id", "r-1")):
        request_headers.request_headers.headers.headers.append(base_pb2.HeaderValue(key=key, raw_value=value.encode()))
    body = pb.ProcessingRequest()
    body.request_body.body = b'{"model": "m", "prompt": "hi", "workflow_metadata": {"workflow_id": "gie-grpc"}}'
    body.request_body.end_of_stream = True
    with grpc.insecure_channel(f"127.0.0.1:{gie_stack.extprocs[0].ports['grpc']}") as channel:
        answers = list(pb_grpc.ExternalProcessorStub(channel).Process(iter([request_headers, body]), timeout=10))
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "request_body"]
    mutation = answers[1].request_body.response.header_mutation
    header = {o.header.key: o.header.raw_value.decode() for o in mutation.set_headers}[DESTINATION_ENDPOINT_HEADER]
    metadata = answers[1].dynamic_metadata.fields[DESTINATION_METADATA_NAMESPACE].struct_value
    assert metadata.fields[DESTINATION_ENDPOINT_HEADER].string_value == header  # the protocol: never different
    assert header in {f"127.0.0.1:{port}" for port in gie_stack.backends.values()}
    assert answers[1].request_body.response.clear_route_cache


async def test_bad_input_is_still_400_json(gie_stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{gie_stack.url}/v1/completions", content=b'{"model": "m", "prompt": ',
                              headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"


async def test_client_cannot_pick_the_destination(gie_stack: Stack) -> None:
    # Envoy's own admin port: if a client-sent header survived, ORIGINAL_DST would connect there.
    headers = {DESTINATION_ENDPOINT_HEADER: f"127.0.0.1:{gie_stack.admin_port}"}
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        health = await client.get(f"{gie_stack.url}/health")  # routed on headers alone (no body)
        llm = await client.post(f"{gie_stack.url}/v1/completions", json=completion("gie-spoof", 0))
    for response in (health, llm):
        assert response.status_code == 200, response.text
        assert served_by(gie_stack, response) in gie_stack.simulators


async def test_workflow_lands_on_one_simulator_and_fails_over(gie_stack: Stack) -> None:
    workflow_id = f"gie-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(timeout=30) as client:
        first = [await client.post(f"{gie_stack.url}/v1/completions", json=completion(workflow_id, step))
                 for step in range(4)]
        assert [r.status_code for r in first] == [200] * 4, first[-1].text
        homes = {served_by(gie_stack, r) for r in first}
        assert len(homes) == 1, homes
        assert first[-1].json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the warm instance
        home = homes.pop()

        gie_stack.kill_simulator(home)
        # ORIGINAL_DST has no second priority to retry on: a request may fail until the poller (every 0.1 s)
        # marks the instance down; then the picker moves the workflow. Bounded: 50 tries, ~10 s at most.
        moved = None
        for _ in range(50):
            r = await client.post(f"{gie_stack.url}/v1/completions", json=completion(workflow_id, 9))
            if r.status_code == 200:
                moved = r
                break
            assert r.status_code in (502, 503), r.text
            await asyncio.sleep(0.2)
        assert moved is not None, "the workflow never moved off the killed instance"
        new_home = served_by(gie_stack, moved)
        assert new_home != home
        after = [await client.post(f"{gie_stack.url}/v1/completions", json=completion(workflow_id, 10 + step))
                 for step in range(3)]
    assert [r.status_code for r in after] == [200] * 3
    assert {served_by(gie_stack, r) for r in after} == {new_home}


def test_gie_example_config_is_the_generators_output_and_valid(capsys: pytest.CaptureFixture[str]) -> None:
    check_example(capsys, Path("envoy/envoy-gie.yaml"), ["--gie"])
