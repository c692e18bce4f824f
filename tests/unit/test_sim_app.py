"""The HTTP front in-process (ASGI transport, time_scale 0): fast and deterministic."""

import asyncio
import contextlib
import random

import httpx
import orjson
import pytest

from benchmarks.simulator.app import create_app
from benchmarks.simulator.config import SimConfig
from benchmarks.simulator.profile import load_profile
from benchmarks.simulator.server import SimServer

LONG_PROMPT = "You are a meticulous assistant. " * 40


@contextlib.asynccontextmanager
async def client(**config):
    cfg = SimConfig(profile=load_profile(), name="sim-test", time_scale=0.0, **config)
    app = create_app(cfg, rng=random.Random(0))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as c:
            c.app = app
            yield c


def sse_events(text: str) -> list[bytes]:
    return [line[len("data: ") :].encode() for line in text.split("\n\n") if line.startswith("data: ")]


async def test_completion_and_cached_tokens():
    async with client() as c:
        r1 = await c.post("/v1/completions", json={"prompt": LONG_PROMPT, "max_tokens": 5, "model": "my-model"})
        r2 = await c.post("/v1/completions", json={"prompt": LONG_PROMPT, "max_tokens": 5})
        assert r1.status_code == r2.status_code == 200
        assert r1.headers["x-sim-instance"] == "sim-test"
        b1, b2 = r1.json(), r2.json()
        assert b1["model"] == "my-model" and b2["model"] == "meta-llama/Llama-3.1-8B-Instruct"
        assert b1["object"] == "text_completion" and b1["choices"][0]["finish_reason"] == "length"
        assert b1["usage"]["completion_tokens"] == 5
        assert b1["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        cached = b2["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached > 0 and cached % 16 == 0 and cached < b2["usage"]["prompt_tokens"]
        assert b1["choices"][0]["text"] == b2["choices"][0]["text"]


async def test_chat_stream_with_usage():
    async with client() as c:
        body = {
            "messages": [{"role": "user", "content": "Tell me a story"}],
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        r = await c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        assert events[-1] == b"[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
        content = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks[:-1])
        reasons = [ch["choices"][0]["finish_reason"] for ch in chunks[:-1]]
        assert reasons[-1] == "length" and set(reasons[:-1]) == {None}
        assert len(content.split()) == 6
        assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)


async def test_completion_stream_without_usage():
    async with client() as c:
        r = await c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "stream": True})
        events = sse_events(r.text)
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert all("usage" not in ch for ch in chunks)
        assert "".join(ch["choices"][0]["text"] for ch in chunks).count(" ") == 2


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/completions", b"{not json"),
        ("/v1/completions", b""),
        ("/v1/completions", b"[1, 2]"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": 0}'),
        ("/v1/completions", b'{"max_tokens": 3}'),
        ("/v1/chat/completions", b'{"messages": "hi"}'),
        ("/v1/chat/completions", b'{"prompt": "x"}'),
        ("/v1/chat/completions", b"\xff\xfe"),
    ],
)
async def test_bad_input_gets_openai_style_400(path, content):
    async with client() as c:
        r = await c.post(path, content=content)
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["code"] is None and "message" in err
        assert r.headers["x-sim-instance"] == "sim-test"


async def test_too_long_prompt_is_400():
    async with client(max_recorded_requests=5) as c:
        r = await c.post("/v1/completions", json={"prompt": list(range(10)), "max_tokens": 200_000})
        assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"]


async def test_models_health_404():
    async with client() as c:
        models = (await c.get("/v1/models")).json()
        assert models["data"][0]["id"] == "meta-llama/Llama-3.1-8B-Instruct"
        health = await c.get("/health")
        assert health.status_code == 200 and health.content == b""
        missing = await c.get("/v2/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
        wrong_method = await c.get("/v1/completions")
        assert wrong_method.status_code == 405


async def test_metrics_exposition_uses_vllm_names():
    async with client() as c:
        for _ in range(2):
            await c.post("/v1/completions", json={"prompt": LONG_PROMPT, "max_tokens": 3})
        text = (await c.get("/metrics")).text
        label = '{model_name="meta-llama/Llama-3.1-8B-Instruct"}'
        for name in (
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:prefix_cache_queries_total",
            "vllm:prefix_cache_hits_total",
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
            "vllm:time_to_first_token_seconds_count",
            "vllm:inter_token_latency_seconds_count",
            "vllm:e2e_request_latency_seconds_count",
        ):
            assert f"{name}{label}" in text, name
        assert 'vllm:request_success_total{finished_reason="length",model_name=' in text
        assert f"vllm:generation_tokens_total{label} 6.0" in text


async def test_recorded_requests_stats_and_reset():
    async with client(max_recorded_requests=2) as c:
        for i in range(3):
            await c.post(
                "/v1/completions",
                json={"prompt": f"p{i}", "max_tokens": 1, "workflow_metadata": {"id": i}},
                headers={"x-workflow-id": f"wf-{i}", "authorization": "Bearer secret"},
            )
        recorded = (await c.get("/sim/requests")).json()
        assert [r["body"]["prompt"] for r in recorded] == ["p1", "p2"]
        assert recorded[-1]["path"] == "/v1/completions"
        assert recorded[-1]["headers"]["x-workflow-id"] == "wf-2"
        assert "authorization" not in recorded[-1]["headers"]
        assert len((await c.get("/sim/requests?limit=1")).json()) == 1
        stats = (await c.get("/sim/stats")).json()
        assert stats["instance"] == "sim-test" and stats["requests"] == 3 and stats["completed"] == 3
        assert stats["num_running"] == 0 and stats["kv_cache_usage"] == 0
        reset = (await c.post("/sim/reset")).json()
        assert reset["reset"] is True
        assert (await c.get("/sim/requests")).json() == []
        assert (await c.get("/sim/stats")).json()["requests"] == 0


async def test_reset_clears_the_prefix_cache():
    async with client() as c:
        body = {"prompt": LONG_PROMPT, "max_tokens": 2}
        await c.post("/v1/completions", json=body)
        await c.post("/sim/reset")
        r = await c.post("/v1/completions", json=body)
        assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


async def test_fault_injection():
    async with client() as c:
        assert (await c.post("/sim/faults", json={"fail_rate": 2})).status_code == 400
        assert (await c.post("/sim/faults", json={"bogus": 1})).status_code == 400
        faults = (await c.post("/sim/faults", json={"fail_rate": 1.0})).json()
        assert faults == {"slowdown": 1.0, "hang": False, "fail_rate": 1.0}
        r = await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 500 and r.json()["error"]["type"] == "internal_server_error"
        await c.post("/sim/faults", json={"fail_rate": 0.0, "slowdown": 4.0})
        assert c.app.state.sim.engine.slowdown == 4.0
        r = await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 200
        assert (await c.get("/sim/faults")).json()["slowdown"] == 4.0


async def test_fail_rate_is_seeded():
    async def statuses() -> list[int]:
        async with client() as c:
            await c.post("/sim/faults", json={"fail_rate": 0.5})
            body = {"prompt": "x", "max_tokens": 1}
            return [(await c.post("/v1/completions", json=body)).status_code for _ in range(20)]

    first = await statuses()
    assert first == await statuses()
    assert set(first) == {200, 500}


async def test_hang_never_answers_until_shutdown():
    async with client() as c:
        await c.post("/sim/faults", json={"hang": True})
        task = asyncio.ensure_future(c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not task.done()
        assert (await c.get("/health")).status_code == 200
        await c.app.state.sim.stop()
        r = await asyncio.wait_for(task, 5)
        assert r.status_code == 503


async def test_in_process_server_on_port_zero():
    server = SimServer(SimConfig(profile=load_profile(), name="inproc", time_scale=0.0, port=0))
    port = await server.start()
    try:
        assert port > 0 and server.url == f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=server.url) as c:
            r = await c.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2})
            assert r.status_code == 200 and r.headers["x-sim-instance"] == "inproc"
        assert server.sim.totals.completed == 1
    finally:
        await server.stop()
