"""Workflow-affinity routing through a real Envoy, the real ext_proc server and simulated vLLM instances."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from benchmarks.demo import run_workflow
from benchmarks.stack import Stack, envoy_binary
from extproc.envoy_config import EnvoyOptions, to_yaml
from extproc.envoy_config import main as envoy_config_main
from tests.conftest import stack_options

REPO = Path(__file__).resolve().parents[2]
LONG_CONTEXT = " ".join(f"fact {i}: the value of item {i} is {i * 7 % 13}." for i in range(120))


def completion(workflow_id: str | None, agent: str, prompt: str, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {"model": "m", "prompt": prompt, "max_tokens": 8, **extra}
    if workflow_id is not None:
        body["workflow_metadata"] = {"workflow_id": workflow_id, "agent_id": agent}
    return body


def metric(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    wanted = f"{name}{{{selector}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{wanted} not in metrics")


def test_generated_config_passes_envoy_validate(stack: Stack, tmp_path: Path) -> None:
    for path in (stack.envoy_config_path, REPO / "envoy" / "envoy.yaml"):
        result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "OK" in result.stdout + result.stderr


def test_committed_example_config_is_the_generators_output(capsys: pytest.CaptureFixture[str]) -> None:
    envoy_config_main([])
    assert capsys.readouterr().out == (REPO / "envoy" / "envoy.yaml").read_text(), "run `make envoy-config`"


def test_envoy_config_choices() -> None:
    config = yaml.safe_load(to_yaml(EnvoyOptions(backends=())))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]
    assert ext_proc["processing_mode"]["request_header_mode"] == "SEND"
    assert ext_proc["processing_mode"]["request_body_mode"] == "BUFFERED"
    assert ext_proc["failure_mode_allow"] is True
    assert ext_proc["message_timeout"] == "1s"


async def test_workflows_stick_to_one_instance_and_reuse_the_cache(stack: Stack) -> None:
    run = uuid.uuid4().hex[:6]

    async def one_workflow(client: httpx.AsyncClient, index: int) -> list[httpx.Response]:
        workflow_id = f"wf-{run}-{index}"
        context = f"Workflow {index} shared context. {LONG_CONTEXT}"
        transcript = ""
        responses = []
        for step in range(4):
            prompt = f"{context}\nTranscript:{transcript}\nAgent {step}: do step {step}."
            response = await client.post(f"{stack.url}/v1/completions",
                                          json=completion(workflow_id, f"agent-{step}", prompt))
            assert response.status_code == 200, response.text
            responses.append(response)
            transcript += response.json()["choices"][0]["text"]
        return responses

    async with httpx.AsyncClient(timeout=30) as client:
        results = await asyncio.gather(*(one_workflow(client, i) for i in range(6)))

    served = [{r.headers["x-served-by"] for r in responses} for responses in results]
    assert all(len(s) == 1 for s in served), served
    instances = Counter(next(iter(s)) for s in served)
    assert len(instances) >= 2, instances
    for responses in results:
        cached = [r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] for r in responses]
        assert all(c > 0 for c in cached[1:]), cached


async def test_demo_workflow_shares_one_instance_with_growing_cache(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        steps = await run_workflow(client, stack.url, f"demo-{uuid.uuid4().hex[:6]}")
    assert [s.status for s in steps] == [200, 200, 200]
    assert len({s.instance for s in steps}) == 1
    assert 0 < steps[1].cached_tokens < steps[2].cached_tokens


async def test_request_without_metadata_succeeds(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{stack.url}/v1/completions", json=completion(None, "", "hello there"))
        chat = await client.post(f"{stack.url}/v1/chat/completions", json={
            "model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        models = await client.get(f"{stack.url}/v1/models")  # the fleet's models, answered by the gateway
    for r in (response, chat):
        assert r.status_code == 200, r.text
        assert r.headers["x-served-by"] in stack.simulators
    assert models.status_code == 200, models.text
    assert {"m", "meta-llama/Llama-3.1-8B-Instruct"} <= {card["id"] for card in models.json()["data"]}


async def test_headers_carry_workflow_when_the_body_cannot(stack: Stack) -> None:
    workflow_id = f"hdr-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(timeout=30) as client:
        served = set()
        for agent in ("a", "b", "c"):
            r = await client.post(f"{stack.url}/v1/chat/completions",
                                  headers={"x-workflow-id": workflow_id, "x-agent-id": agent},
                                  json={"model": "m", "max_tokens": 4,
                                        "messages": [{"role": "user", "content": LONG_CONTEXT + agent}]})
            assert r.status_code == 200
            served.add(r.headers["x-served-by"])
    assert len(served) == 1


async def test_client_cannot_pick_the_cluster(stack: Stack) -> None:
    workflow_id = f"pin-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(timeout=30) as client:
        first = await client.post(f"{stack.url}/v1/completions", json=completion(workflow_id, "a", "x"))
        home = first.headers["x-served-by"]
        other = next(n for n in stack.simulators if n != home)
        forced = await client.post(f"{stack.url}/v1/completions", headers={"x-upstream-cluster": other},
                                   json=completion(workflow_id, "a", "y"))
    assert forced.headers["x-served-by"] == home


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2, 3]", None),
        (orjson.dumps({"prompt": "x", "workflow_metadata": "wf-1"}), "workflow_metadata"),
        (orjson.dumps({"prompt": "x", "workflow_metadata": {"agent_id": "a"}}), "workflow_metadata.workflow_id"),
        (orjson.dumps({"prompt": "x", "workflow_metadata": {"workflow_id": 12}}), "workflow_metadata.workflow_id"),
        (orjson.dumps({"prompt": "x", "workflow_metadata": {"workflow_id": "w" * 257}}),
         "workflow_metadata.workflow_id"),
        (orjson.dumps({"prompt": "x", "workflow_metadata": {"workflow_id": "w", "context_sharing_strategy": "x"}}),
         "workflow_metadata.context_sharing_strategy"),
        (orjson.dumps({"prompt": "x", "workflow_metadata": {"workflow_id": "w", "workflow_priority": "hi"}}),
         "workflow_metadata.workflow_priority"),
        (b"[" * 20000 + b"]" * 20000, None),
    ],
)
async def test_bad_input_gets_a_400_json_error_from_the_gateway(stack: Stack, body: bytes, param: str | None) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{stack.url}/v1/completions", content=body,
                                     headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        assert "x-served-by" not in response.headers  # refused at the gateway, no backend saw it
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
        # ... and the gateway keeps serving.
        ok = await client.post(f"{stack.url}/v1/completions", json=completion(None, "", "still up"))
        assert ok.status_code == 200


async def test_bad_header_metadata_gets_a_400(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{stack.url}/v1/models", headers={"x-workflow-id": "w" * 300})
    assert response.status_code == 400 and response.json()["error"]["param"] == "x-workflow-id"


async def test_backends_never_see_workflow_metadata(stack: Stack) -> None:
    marker = f"strip-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(3):
            r = await client.post(f"{stack.url}/v1/completions", json=completion(marker, "a", f"{marker} {i}"))
            assert r.status_code == 200
        seen = []
        for name in stack.simulators:
            recorded = (await client.get(f"{stack.simulator_url(name)}/sim/requests")).json()
            seen += [entry for entry in recorded if marker in orjson.dumps(entry).decode()]
    assert len(seen) == 3
    assert all("workflow_metadata" not in entry["body"] for entry in seen)
    assert all(entry["body"]["prompt"].startswith(marker) for entry in seen)


async def test_streaming_responses_pass_and_release_their_load(stack: Stack) -> None:
    workflow_id = f"stream-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(timeout=30) as client:
        body = completion(workflow_id, "a", LONG_CONTEXT, stream=True, stream_options={"include_usage": True})
        async with client.stream("POST", f"{stack.url}/v1/completions", json=body) as response:
            assert response.status_code == 200
            chunks = [line async for line in response.aiter_lines() if line.startswith("data:")]
        assert chunks[-1] == "data: [DONE]"
        assert orjson.loads(chunks[-2][5:])["usage"]["prompt_tokens"] > 0
        metrics_port = stack.extprocs[0].ports["metrics"]
        for _ in range(50):  # the observer stream ends asynchronously, right after the response
            text = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            if sum(metric(text, "extproc_outstanding_requests", instance=n) for n in stack.simulators) == 0:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("outstanding requests never returned to 0")
        assert metric(text, "workflow_active_count") >= 1
        assert sum(metric(text, "extproc_cached_tokens_total", instance=n) for n in stack.simulators) > 0


def test_ext_proc_down_fails_open_without_affinity() -> None:
    """failure_mode_allow: true — with the ext_proc server gone, requests are still served (no affinity)."""
    with Stack(stack_options(instances=2, with_a2a=False)) as stack, httpx.Client(timeout=30) as client:
        body = completion("fo-1", "a", "hello")
        assert client.post(f"{stack.url}/v1/completions", json=body).status_code == 200
        stack.extprocs[0].stop()
        served = Counter()
        for _ in range(10):
            r = client.post(f"{stack.url}/v1/completions", json=body)
            assert r.status_code == 200, r.text
            served[r.headers["x-served-by"]] += 1
        assert set(served) <= set(stack.simulators)
        # Nothing checks or strips metadata while the ext_proc is down: the backend gets the body as sent.
        marker = f"failopen-{uuid.uuid4().hex[:6]}"
        unchecked = client.post(f"{stack.url}/v1/completions", json={
            "prompt": marker, "max_tokens": 2, "workflow_metadata": {"workflow_id": marker}})
        assert unchecked.status_code == 200
        recorded = client.get(f"{stack.simulator_url(unchecked.headers['x-served-by'])}/sim/requests").json()
        assert any(e["body"].get("workflow_metadata") == {"workflow_id": marker} for e in recorded)

        stack.restart_extproc(0)
        deadline = time.monotonic() + 15  # Envoy's gRPC client reconnects with backoff
        while True:
            r = client.post(f"{stack.url}/v1/completions", json={"prompt": "x", "workflow_metadata": "bad"})
            if r.status_code == 400 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 400, "ext_proc did not take over again after its restart"


def test_failure_mode_deny_answers_an_error_when_ext_proc_is_down() -> None:
    with Stack(stack_options(instances=1, with_a2a=False, failure_mode_allow=False)) as stack, \
            httpx.Client(timeout=30) as client:
        stack.extprocs[0].stop()
        r = client.post(f"{stack.url}/v1/completions", json=completion("fd-1", "a", "hello"))
        assert r.status_code >= 500
        assert "error" in r.json()
