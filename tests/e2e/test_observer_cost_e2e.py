"""The observer's cost per request does not grow with output tokens (requestcontrol/stream_observation.py).

Through the real Envoy: streams on the stream-idle routes reach the observer without their body (a per-route
processing mode), their end is the end of the observer's gRPC stream (``deferred_close_timeout``), and their usage
is estimated. With ``--observe-stream-bodies 1`` every body is read again, and the per-request message count grows
with the tokens: the same measurement, so this test would fail if the body-less routes stopped applying.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from benchmarks.stack import Stack
from tests.conftest import stack_options
from tests.e2e.test_routing_e2e import metric

PROMPT = " ".join(f"step {i}: collect the figures and check them against the plan." for i in range(30))


async def _metrics(client: httpx.AsyncClient, stack: Stack) -> str:
    return (await client.get(f"http://127.0.0.1:{stack.extprocs[0].ports['metrics']}/metrics")).text


async def _settled(client: httpx.AsyncClient, stack: Stack) -> str:
    """The metrics once every routed request has been seen to end (the observer streams close just after)."""
    for _ in range(100):
        text = await _metrics(client, stack)
        if sum(metric(text, "extproc_outstanding_requests", instance=n) for n in stack.simulators) == 0:
            return text
        await asyncio.sleep(0.05)
    raise AssertionError("requests still outstanding")


async def _per_request(client: httpx.AsyncClient, stack: Stack, tag: str, max_tokens: int, count: int
                       ) -> tuple[float, list[dict[str, int]], str]:
    """``(observer messages per request, the usage each stream reported, the metrics after)``."""
    before = await _settled(client, stack)

    async def one(i: int) -> dict[str, int]:
        body = {"model": "m", "prompt": f"{tag}-{i} {PROMPT}", "max_tokens": max_tokens, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True},
                "workflow_metadata": {"workflow_id": f"{tag}-{i % 3}"}}
        response = await client.post(f"{stack.url}/v1/completions", json=body)
        assert response.status_code == 200
        chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        usage: dict[str, int] = next(c["usage"] for c in chunks if c.get("usage"))
        assert usage["completion_tokens"] == max_tokens
        return usage

    usages = [await one(i) for i in range(count)]
    after = await _settled(client, stack)
    messages = metric(after, "extproc_observer_messages_total") - metric(before, "extproc_observer_messages_total")
    streams = metric(after, "extproc_observer_streams_total") - metric(before, "extproc_observer_streams_total")
    assert streams == count
    return messages / streams, usages, after


async def test_observer_messages_per_stream_do_not_grow_with_output_tokens() -> None:
    run = uuid.uuid4().hex[:6]
    with Stack(stack_options(with_a2a=False, extproc_args=("--observe-stream-bodies", "0"))) as stack:
        async with httpx.AsyncClient(timeout=60) as client:
            short, _, _ = await _per_request(client, stack, f"s16-{run}", 16, 6)
            long, usages, text = await _per_request(client, stack, f"s256-{run}", 256, 6)
            estimated = metric(text, "extproc_usage_estimated_total")
            prompt_tokens = metric(text, "extproc_estimated_prompt_tokens_total")
            reported_tokens = sum(metric(text, "extproc_prompt_tokens_total", instance=n) for n in stack.simulators)
    print(f"\nobserver messages per stream, body not read: 16 tokens {short:.2f}, 256 tokens {long:.2f}; "
          f"usage estimated for {estimated:.0f} streams")
    assert short == long == 2  # request headers, response headers; the stream's end is the response's end
    assert estimated == 12
    # The estimates count apart from the backends' reported usage, within a factor of 2 of it (routed on its
    # metadata, a request's prompt is estimated from its body's length / 4).
    assert reported_tokens == 0
    reported = sum(u["prompt_tokens"] for u in usages) * 2  # both rounds' prompts are about as long
    assert reported / 2 <= prompt_tokens <= reported * 2


async def test_with_every_stream_body_read_the_count_grows_and_the_estimate_is_measured() -> None:
    run = uuid.uuid4().hex[:6]
    with Stack(stack_options(with_a2a=False, extproc_args=("--observe-stream-bodies", "1"))) as stack:
        async with httpx.AsyncClient(timeout=60) as client:
            short, _, _ = await _per_request(client, stack, f"r16-{run}", 16, 4)
            long, _, text = await _per_request(client, stack, f"r256-{run}", 256, 4)
    compared = metric(text, "extproc_usage_estimate_error_count", tokens="completion")
    print(f"\nobserver messages per stream, every body read: 16 tokens {short:.2f}, 256 tokens {long:.2f}; "
          f"estimates measured against reported usage: {compared:.0f}")
    assert long > short + 10  # one message per chunk Envoy read: the cost the body-less routes remove
    assert metric(text, "extproc_usage_estimated_total") == 0  # every usage was the reported one
    assert compared == 8
