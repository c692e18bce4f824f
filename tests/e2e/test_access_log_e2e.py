"""Access-log mode (``--response-observation access-log``, docs/observability.md "Response observation").

Through the real Envoy: only the requests the router marks (the ``--observe-stream-bodies`` sample) open an
observer stream; the others end with their router stream and reach the ext_proc server as entries of Envoy's
gRPC access log (``envoy.access_loggers.http_grpc`` → ``envoy.service.accesslog.v3.AccessLogService``), with
their status and the cluster that answered. Nothing is lost: every request is completed exactly once, its load
released, its usage estimated (or, in the sample, read), and a dead instance's retried attempts still count
against it (passive health).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from benchmarks.stack import Stack
from tests.conftest import stack_options
from tests.e2e.test_routing_e2e import metric

PROMPT = " ".join(f"step {i}: read the ticket, then draft the answer for the customer." for i in range(25))


async def _metrics(client: httpx.AsyncClient, stack: Stack) -> str:
    return (await client.get(f"http://127.0.0.1:{stack.extprocs[0].ports['metrics']}/metrics")).text


def _completed(text: str) -> float:
    return (metric(text, "extproc_access_log_entries_total", outcome="completed")
            + metric(text, "extproc_observer_streams_total"))


async def _send(client: httpx.AsyncClient, stack: Stack, workflow: str, tag: str, stream: bool) -> str:
    body = {"model": "m", "prompt": f"{PROMPT} {tag}", "max_tokens": 12, "stream": stream,
            "workflow_metadata": {"workflow_id": workflow}}
    if stream:
        body["stream_options"] = {"include_usage": True}
    response = await client.post(f"{stack.url}/v1/completions", json=body)
    assert response.status_code == 200, response.text
    if stream:
        assert response.text.rstrip().endswith("data: [DONE]")
    else:
        assert response.json()["usage"]["completion_tokens"] == 12
    return response.headers["x-served-by"]


async def test_every_response_is_completed_once_by_the_access_log_or_the_sampled_observer() -> None:
    run = uuid.uuid4().hex[:6]
    options = stack_options(with_a2a=False, response_observation="access-log",
                            extproc_args=("--observe-stream-bodies", "0.25"))
    with Stack(options) as stack:
        async with httpx.AsyncClient(timeout=60) as client:
            before = await _metrics(client, stack)
            for i in range(16):
                await _send(client, stack, f"al-{run}-{i % 4}", f"al-{run}-{i}", stream=i % 2 == 1)
            for _ in range(100):  # the logger flushes every ACCESS_LOG_FLUSH_S
                after = await _metrics(client, stack)
                if _completed(after) - _completed(before) >= 16:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # nothing more arrives (no entry is completed twice)
            after = await _metrics(client, stack)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    logged = delta("extproc_access_log_entries_total", outcome="completed")
    observed = delta("extproc_observer_streams_total")
    print(f"\naccess-log mode, 16 requests: {logged:.0f} completed from the access log, {observed:.0f} by an "
          f"observer stream, {delta('extproc_access_log_batches_total'):.0f} batches")
    assert (logged, observed) == (12, 4)  # the sample (one in 4) is read in full; the rest logged
    assert delta("extproc_access_log_entries_total", outcome="skipped") == 0
    assert delta("extproc_access_log_entries_total", outcome="failed") == 0
    assert delta("extproc_usage_estimated_total") == 12  # each logged response's usage is the router's estimate
    reported = sum(metric(after, "extproc_prompt_tokens_total", instance=n) for n in stack.simulators)
    assert reported > 0  # the sampled ones report the backend's own usage
    assert sum(metric(after, "extproc_outstanding_requests", instance=n) for n in stack.simulators) == 0
    assert metric(after, "extproc_inflight_abandoned_total") == 0  # every end was seen by this replica


async def test_a_dead_instance_is_held_down_from_its_retried_attempts_in_the_access_log() -> None:
    """The poller polls rarely here, so only the access log can tell the router that Envoy retried the
    workflow's requests away from its instance (the cluster that answered differs from the one picked)."""
    run = uuid.uuid4().hex[:6]
    options = stack_options(with_a2a=False, response_observation="access-log",
                            extproc_args=("--observe-stream-bodies", "0", "--poll-interval", "60"))
    with Stack(options) as stack:
        async with httpx.AsyncClient(timeout=60) as client:
            workflow = f"dead-{run}"
            victim = await _send(client, stack, workflow, f"{workflow}-0", stream=False)
            stack.simulators[victim].stop()
            served = [await _send(client, stack, workflow, f"{workflow}-{i}", stream=i % 2 == 0) for i in range(1, 6)]
            for _ in range(100):
                text = await _metrics(client, stack)
                if metric(text, "extproc_instance_healthy", instance=victim) == 0:
                    break
                await asyncio.sleep(0.05)
        log = stack.extprocs[0].log_tail(200)
    print(f"\nworkflow {workflow} on {victim}, killed; then served by {served}")
    assert victim not in served  # Envoy retried each on another instance
    assert metric(text, "extproc_instance_healthy", instance=victim) == 0
    assert metric(text, "extproc_observer_streams_total") == 0  # no observer stream told it: the access log did
    assert "marked down after failed attempts" in log
    assert json.dumps(victim) in log
