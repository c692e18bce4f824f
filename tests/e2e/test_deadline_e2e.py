"""Per-request deadlines through the real Envoy, default settings (requestcontrol/deadline.py, docs/resilience.md).

A frozen instance (SIGSTOP: sockets open, nothing answers, /health included) must not hold the requests already
sent to it: each is answered from another instance once its deadline (Envoy's per-try timeout, set by the
ext_proc answer) expires. And a healthy long generation under load is never cut.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections import Counter

import httpx

from benchmarks.stack import Stack
from extproc.config import DEFAULT_DEADLINE_FLOOR_S, DEFAULT_DEADLINE_MULTIPLIER, STREAM_IDLE_BUCKETS_S
from extproc.requestcontrol.deadline import DeadlinePolicy, stream_idle_s
from tests.conftest import stack_options

PROMPT = " ".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(20))


def envoy_stat(stack: Stack, name: str) -> int:
    text = httpx.get(f"{stack.admin_url}/stats", params={"filter": name.replace(".", r"\.") + "$"}, timeout=5).text
    return sum(int(line.rpartition(": ")[2]) for line in text.splitlines() if line.strip())


def recorded_deadlines(stack: Stack, name: str, marker: str) -> list[int]:
    """The per-try timeouts (ms) Envoy applied to the requests an instance received, as Envoy tells the upstream
    (x-envoy-expected-rq-timeout-ms = the per-try timeout when one is set)."""
    requests = httpx.get(f"{stack.simulator_url(name)}/sim/requests", timeout=5).json()
    entries = requests["requests"] if isinstance(requests, dict) else requests
    return [int(r["headers"]["x-envoy-expected-rq-timeout-ms"]) for r in entries
            if marker in json.dumps(r["body"]) and "x-envoy-expected-rq-timeout-ms" in r["headers"]]


async def test_requests_on_a_frozen_instance_are_answered_from_another_within_the_deadline() -> None:
    with Stack(stack_options(with_a2a=False)) as stack:
        run = uuid.uuid4().hex[:6]
        async with httpx.AsyncClient(timeout=60) as client:
            async def send(workflow: str, max_tokens: int, stream: bool = False) -> tuple[int, str, float, int]:
                started = time.monotonic()
                payload = {"model": "m", "prompt": f"{workflow} {PROMPT}", "max_tokens": max_tokens,
                           "stream": stream, "workflow_metadata": {"workflow_id": workflow}}
                response = await client.post(f"{stack.url}/v1/completions", json=payload)
                tokens = (response.json()["usage"]["completion_tokens"] if response.status_code == 200 and not stream
                          else response.text.count('"text"'))
                return response.status_code, response.headers.get("x-served-by", ""), \
                    time.monotonic() - started, tokens

            workflows = [f"frz-{run}-{i}" for i in range(9)]
            homes: dict[str, str] = {}
            for _ in range(4):  # warm-up: workflows placed, the learner has latency figures
                for workflow, (status, served, _, _) in zip(
                        workflows, await asyncio.gather(*(send(w, 64) for w in workflows)), strict=True):
                    assert status == 200
                    homes[workflow] = served
            victim = Counter(homes.values()).most_common(1)[0][0]
            on_victim = [w for w in workflows if homes[w] == victim]
            process = stack.simulators[victim].popen
            # Generations of ~0.5 s wall (4000 tokens at 0.124 ms) in flight when the instance freezes.
            # Not streamed: a stream whose response already started cannot be retried (docs/resilience.md).
            in_flight = [asyncio.create_task(send(w, 4000)) for w in on_victim for _ in range(3)]
            await asyncio.sleep(0.1)
            process.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            try:
                # Requests sent right after the freeze, before anything noticed it, go there too.
                late = [asyncio.create_task(send(w, 64)) for w in on_victim]
                others = [await send(w, 64) for w in workflows if homes[w] != victim]
                results = await asyncio.gather(*in_flight)
                late_results = await asyncio.gather(*late)
                answered_after = time.monotonic() - frozen_at
                per_try_timeouts = envoy_stat(stack, f"cluster.{victim}.upstream_rq_per_try_timeout")
                idle_timeouts = envoy_stat(stack, f"cluster.{victim}.upstream_rq_per_try_idle_timeout")
                extproc_log = stack.extprocs[0].log_tail(200)
            finally:
                process.send_signal(signal.SIGCONT)

        print(f"\nvictim={victim} workflows={len(on_victim)} in-flight latencies (s)="
              f"{[round(r[2], 2) for r in results]} served_by={[r[1] for r in results]} "
              f"late={[round(r[2], 2) for r in late_results]} per_try_timeouts={per_try_timeouts} "
              f"idle_timeouts={idle_timeouts} all answered {answered_after:.1f} s after the freeze")
        assert all(status == 200 for status, _, _, _ in others)  # healthy instances unaffected
        # Expected ~0.5 s << the floor: the deadline is the floor (10 s); the retry's own run adds ~0.5 s.
        bound = max(DEFAULT_DEADLINE_FLOOR_S, DEFAULT_DEADLINE_MULTIPLIER * 0.5) + 0.5 + 2.0
        for status, served, latency, _tokens in results + late_results:
            assert status == 200
            if served != victim:  # retried away from the frozen instance
                assert latency <= bound
        retried = [r for r in results if r[1] != victim]
        # Non-streaming attempts had sent nothing: every one of them was answered from another instance.
        assert len([r for r in retried if r[3] == 4000]) == 3 * len(on_victim)
        assert all(DEFAULT_DEADLINE_FLOOR_S - 0.5 <= r[2] <= bound for r in retried)
        assert per_try_timeouts + idle_timeouts >= len(retried)
        # The passive health check counted the timed-out attempts (retried away) and held the instance down.
        assert "marked down after failed attempts" in extproc_log


async def test_long_generations_under_load_are_never_cut() -> None:
    # Time scale 0.5: 1500 tokens at ~12.4 simulated ms take ~9-10 wall seconds, 12 at once on 3 instances.
    with Stack(stack_options(with_a2a=False, time_scale=0.5)) as stack:
        run = uuid.uuid4().hex[:6]
        async with httpx.AsyncClient(timeout=120) as client:
            async def send(tag: str, max_tokens: int, stream: bool) -> tuple[int, float, int]:
                started = time.monotonic()
                payload = {"model": "m", "prompt": f"{tag} {PROMPT}", "max_tokens": max_tokens, "stream": stream,
                           "stream_options": {"include_usage": True}} if stream else \
                    {"model": "m", "prompt": f"{tag} {PROMPT}", "max_tokens": max_tokens}
                response = await client.post(f"{stack.url}/v1/completions", json=payload)
                if stream:
                    chunks = [json.loads(line[6:]) for line in response.text.splitlines()
                              if line.startswith("data: {")]
                    tokens = next((c["usage"]["completion_tokens"] for c in chunks if c.get("usage")), -1)
                else:
                    tokens = response.json()["usage"]["completion_tokens"] if response.status_code == 200 else -1
                return response.status_code, time.monotonic() - started, tokens

            for wave in range(3):  # warm-up: the learner sees TTFT, ITL and the clock ratio (0.5)
                assert all(r[0] == 200 for r in await asyncio.gather(
                    *(send(f"warm-{run}-{wave}-{i}", 100, i % 2 == 0) for i in range(12))))
            marker = f"long-{run}"
            results = await asyncio.gather(*(send(f"{marker}-{i}", 1500, i % 2 == 0) for i in range(12)))
        deadlines = [d for name in stack.simulators for d in recorded_deadlines(stack, name, marker)]
        per_try = sum(envoy_stat(stack, f"cluster.{n}.upstream_rq_per_try_timeout") for n in stack.simulators)
        idle = sum(envoy_stat(stack, f"cluster.{n}.upstream_rq_per_try_idle_timeout") for n in stack.simulators)
        retries = sum(envoy_stat(stack, f"cluster.{n}.upstream_rq_retry") for n in stack.simulators)
        latencies = sorted(r[1] for r in results)
        print(f"\nlong generations: latencies (s) min {latencies[0]:.2f} max {latencies[-1]:.2f}; deadlines (ms) "
              f"{sorted(deadlines)}; per-try timeouts {per_try}, idle timeouts {idle}, retries {retries}")
        assert [r[0] for r in results] == [200] * 12
        assert [r[2] for r in results] == [1500] * 12  # complete, none cut
        assert per_try == idle == retries == 0
        assert len(deadlines) == 12
        # Learned, not the cold priors (3 x (2 + 1499 x 0.05) = 231 s), and above every healthy run.
        assert max(deadlines) < 100_000
        assert min(deadlines) / 1000 > latencies[-1]


async def test_streams_on_a_frozen_instance_end_within_their_idle_bound() -> None:
    """A stream whose response started when its instance froze cannot be retried (bytes went downstream), so its
    idle route cuts it once it has been silent for the bucket; a stream that had not started yet is retried on
    another instance and answered in full. Completions and chat streams, several at once on the frozen one."""
    idle_bound = stream_idle_s(DeadlinePolicy(), 0.0, 0.0, STREAM_IDLE_BUCKETS_S)  # fast engine: the floor's bucket
    assert idle_bound is not None
    with Stack(stack_options(with_a2a=False)) as stack:
        run = uuid.uuid4().hex[:6]
        frozen_at: list[float] = []
        async with httpx.AsyncClient(timeout=120) as client:
            async def stream(workflow: str, chat: bool, max_tokens: int,
                             first_chunk: asyncio.Event | None = None) -> tuple[str, str, int, float]:
                """``(outcome, served by, content chunks, seconds from the freeze (or the start) to the end)``."""
                started = time.monotonic()
                body: dict[str, object] = {"model": "m", "max_tokens": max_tokens, "stream": True,
                                           "workflow_metadata": {"workflow_id": workflow}}
                if chat:
                    body["messages"] = [{"role": "user", "content": f"{workflow} {PROMPT}"}]
                else:
                    body["prompt"] = f"{workflow} {PROMPT}"
                chunks, served, outcome = 0, "", "complete"
                try:
                    async with client.stream("POST", f"{stack.url}/v1/{'chat/' if chat else ''}completions",
                                             json=body) as response:
                        served = response.headers.get("x-served-by", "")
                        async for line in response.aiter_lines():
                            chunks += line.startswith("data: {")
                            if chunks and first_chunk is not None:
                                first_chunk.set()
                except httpx.RemoteProtocolError:
                    outcome = "cut"
                return outcome, served, chunks, time.monotonic() - (frozen_at[0] if frozen_at else started)

            # A chat prompt and a completion prompt share no cached prefix, so each workflow speaks one of them
            # (the router may place a workflow's other form elsewhere).
            workflows = [(f"frzs-{run}-{i}-{'chat' if chat else 'text'}", chat) for i in range(9)
                         for chat in (False, True)]
            homes: dict[tuple[str, bool], str] = {}
            for _ in range(3):
                for workflow, chat in workflows:
                    body = {"model": "m", "max_tokens": 8, "workflow_metadata": {"workflow_id": workflow}}
                    if chat:
                        body["messages"] = [{"role": "user", "content": f"{workflow} {PROMPT}"}]
                    else:
                        body["prompt"] = f"{workflow} {PROMPT}"
                    response = await client.post(f"{stack.url}/v1/{'chat/' if chat else ''}completions", json=body)
                    assert response.status_code == 200
                    homes[workflow, chat] = response.headers["x-served-by"]
            victim = Counter(homes.values()).most_common(1)[0][0]
            on_victim = [key for key in workflows if homes[key] == victim]
            # Endless at this time scale (100k tokens x 0.124 ms = 12 s of stream): frozen mid-stream, once every
            # one of them has sent a token (a loaded machine may take more than a second to start nine).
            first_chunks = [asyncio.Event() for _ in on_victim]
            started = [asyncio.create_task(stream(w, chat, 100_000, event))
                       for (w, chat), event in zip(on_victim, first_chunks, strict=True)]
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in first_chunks)), timeout=10)
            process = stack.simulators[victim].popen
            process.send_signal(signal.SIGSTOP)
            frozen_at.append(time.monotonic())
            try:
                # Sent after the freeze, before anything noticed it: no headers come back, the per-try timeout
                # retries them on another instance.
                late = [asyncio.create_task(stream(w, chat, 200)) for w, chat in on_victim]
                # A stream the load bound sent elsewhere runs to its end there; only the frozen ones are judged.
                started_results = [r for r in await asyncio.gather(*started) if r[1] == victim]
                late_results = await asyncio.gather(*late)
                idle_timeouts = envoy_stat(stack, f"cluster.{victim}.upstream_rq_per_try_idle_timeout")
                per_try_timeouts = envoy_stat(stack, f"cluster.{victim}.upstream_rq_per_try_timeout")
            finally:
                process.send_signal(signal.SIGCONT)

        print(f"\nstreams frozen mid-response: {[(r[0], r[2], round(r[3], 2)) for r in started_results]}; "
              f"sent after the freeze: {[(r[0], r[1], r[2], round(r[3], 2)) for r in late_results]}; "
              f"idle timeouts {idle_timeouts}, per-try timeouts {per_try_timeouts}, idle bound {idle_bound:g} s")
        assert started_results
        for outcome, served, chunks, after_freeze in started_results:
            assert (outcome, served) == ("cut", victim)
            assert chunks > 0  # it had started: the cut is the only answer Envoy can give
            assert after_freeze <= idle_bound + 3.0  # bound + the data already in the socket buffers + load
        for outcome, served, chunks, after_freeze in late_results:
            assert outcome == "complete" and served != victim and chunks >= 200
            assert after_freeze <= max(DEFAULT_DEADLINE_FLOOR_S, idle_bound) + 3.0
        # A late stream sent after the router already held the instance down went elsewhere at once.
        retried = [r for r in late_results if r[3] >= DEFAULT_DEADLINE_FLOOR_S - 0.5]
        assert idle_timeouts + per_try_timeouts >= len(started_results) + len(retried)
