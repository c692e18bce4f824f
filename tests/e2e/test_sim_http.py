"""The simulator as a real process: port 0, the listening line on stdout, HTTP, metrics, SIGTERM."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest

pytestmark = pytest.mark.e2e

LONG_PROMPT = "Plan the next step of the workflow carefully and explain your reasoning. " * 30
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass
class Sim:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_sim(name: str, *extra: str) -> Sim:
    argv = [sys.executable, "-m", "benchmarks.simulator", "--port", "0", "--time-scale", "0.01", "--name", name]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*argv, *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
            match = re.search(rb"VLLM_SIM_LISTENING port=(\d+)\n", buffer)
            if match:
                return Sim(proc, int(match.group(1)))
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"simulator did not report its port; stdout={buffer!r}")


def stop_sim(sim: Sim) -> None:
    if sim.proc.poll() is None:
        sim.proc.send_signal(signal.SIGTERM)
        try:
            sim.proc.wait(10)
        except subprocess.TimeoutExpired:
            sim.proc.kill()
            sim.proc.wait()


@pytest.fixture(scope="module")
def sim() -> Iterator[Sim]:
    s = start_sim("e2e-sim")
    try:
        yield s
    finally:
        stop_sim(s)


@pytest.fixture
def client(sim: Sim) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=30) as c:
        yield c


def test_completion_and_chat(client: httpx.Client):
    r = client.post("/v1/completions", json={"prompt": "Say hello", "max_tokens": 4})
    assert r.status_code == 200 and r.headers["x-sim-instance"] == "e2e-sim"
    body = r.json()
    assert body["model"] == MODEL and body["usage"]["completion_tokens"] == 4
    assert len(body["choices"][0]["text"].split()) == 4

    r = client.post(
        "/v1/chat/completions",
        json={"model": "any-name", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "any-name" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert set(body["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"}


def test_same_prompt_twice_hits_the_prefix_cache(client: httpx.Client):
    before = client.get("/metrics").text
    body = {"prompt": LONG_PROMPT, "max_tokens": 2}
    first = client.post("/v1/completions", json=body).json()["usage"]
    second = client.post("/v1/completions", json=body).json()["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0 and cached % 16 == 0 and cached <= second["prompt_tokens"] - 1
    after = client.get("/metrics").text

    def hits(text: str) -> float:
        m = re.search(r'^vllm:prefix_cache_hits_total\{model_name="[^"]+"\} (\S+)$', text, re.M)
        assert m, text
        return float(m.group(1))

    assert hits(after) - hits(before) == cached


def test_streaming_with_usage(client: httpx.Client):
    body = {"prompt": "Count", "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_metrics_use_vllm_names(client: httpx.Client):
    client.post("/v1/completions", json={"prompt": "metrics please", "max_tokens": 2})
    text = client.get("/metrics").text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
    ):
        assert re.search(rf'^{name}\{{model_name="{MODEL}"\}} \S+$', text, re.M), name
    for name in (
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds",
    ):
        assert re.search(rf'^{name}_bucket\{{le="\+Inf",model_name="{MODEL}"\}} [1-9]', text, re.M), name


def test_recorded_request_bodies(client: httpx.Client):
    client.post(
        "/v1/completions",
        json={"prompt": "record me", "max_tokens": 1, "workflow_metadata": {"workflow_id": "wf-9"}},
        headers={"x-workflow-id": "wf-9"},
    )
    recorded = client.get("/sim/requests", params={"limit": 1}).json()
    assert recorded[0]["path"] == "/v1/completions"
    assert recorded[0]["body"]["workflow_metadata"] == {"workflow_id": "wf-9"}
    assert recorded[0]["headers"]["x-workflow-id"] == "wf-9"
    stats = client.get("/sim/stats").json()
    assert stats["instance"] == "e2e-sim" and stats["requests"] >= 1


def test_bad_json_is_a_400_json_error(client: httpx.Client):
    r = client.post("/v1/completions", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert client.get("/health").status_code == 200


def test_sigterm_exits_promptly_and_lets_in_flight_requests_finish():
    s = start_sim("e2e-term")
    try:
        body = {"prompt": "go", "max_tokens": 80, "stream": True}
        # ~1 simulated s of decoding = ~10 ms of wall time at time-scale 0.01.
        with (
            httpx.Client(base_url=s.url, timeout=30) as c,
            c.stream("POST", "/v1/completions", json=body) as r,
        ):
            s.proc.send_signal(signal.SIGTERM)
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert s.proc.wait(5) == 0
    finally:
        stop_sim(s)
