"""Smart placement end to end: failover when an instance dies, load-aware placement, prefix-aware fallback."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict

import httpx

from benchmarks.stack import Stack
from tests.conftest import stack_options

CONTEXT = " ".join(f"record {i}: amount {i * 13 % 97} units, status {'open' if i % 3 else 'closed'}."
                   for i in range(80))


def body(workflow_id: str | None, prompt: str, max_tokens: int = 8) -> dict[str, object]:
    payload: dict[str, object] = {"model": "m", "prompt": prompt, "max_tokens": max_tokens}
    if workflow_id is not None:
        payload["workflow_metadata"] = {"workflow_id": workflow_id, "agent_id": "agent"}
    return payload


async def wait_until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_killed_instance_loses_no_request_and_its_workflows_move() -> None:
    with Stack(stack_options(with_a2a=False)) as stack:
        run = uuid.uuid4().hex[:6]
        served: dict[str, list[tuple[float, str]]] = defaultdict(list)
        failures: Counter[int] = Counter()
        cut = [0]  # responses cut after they had started (retried once by the client)
        phase = {"stop": False}

        async def workflow(client: httpx.AsyncClient, index: int) -> None:
            workflow_id = f"kill-{run}-{index}"
            step = 0
            while not phase["stop"]:
                payload = body(workflow_id, f"{workflow_id} {CONTEXT} step {step}")
                try:
                    response = await client.post(f"{stack.url}/v1/completions", json=payload)
                except httpx.RemoteProtocolError:
                    # The instance died after its response had started (headers out, body cut, or lost to the
                    # RST of the dying socket): no router can resend a started response (README, "Health and
                    # failover"); clients retry it, as the OpenAI SDK does. Counted, and the retry must succeed.
                    cut[0] += 1
                    response = await client.post(f"{stack.url}/v1/completions", json=payload)
                if response.status_code != 200:
                    failures[response.status_code] += 1
                else:
                    served[workflow_id].append((time.monotonic(), response.headers["x-served-by"]))
                step += 1

        async with httpx.AsyncClient(timeout=30) as client:
            tasks = [asyncio.create_task(workflow(client, i)) for i in range(9)]
            await asyncio.sleep(1.5)
            homes = {wid: entries[-1][1] for wid, entries in served.items()}
            victim = Counter(homes.values()).most_common(1)[0][0]
            stack.kill_simulator(victim)
            killed_at = time.monotonic()
            await asyncio.sleep(2.5)
            stack.restart_simulator(victim)
            restarted_at = time.monotonic()

            async def rejoined() -> bool:
                metrics = (await client.get(f"http://127.0.0.1:{stack.extprocs[0].ports['metrics']}/metrics")).text
                return f'extproc_instance_healthy{{instance="{victim}"}} 1.0' in metrics

            await wait_until(rejoined)
            # New workflows reach the restarted (idle) instance again, once Envoy's outlier ejection (2 s
            # base) has also expired.
            fresh: Counter[str] = Counter()

            async def victim_serves_again() -> bool:
                r = await client.post(f"{stack.url}/v1/completions",
                                      json=body(f"fresh-{run}-{sum(fresh.values())}", CONTEXT))
                assert r.status_code == 200
                fresh[r.headers["x-served-by"]] += 1
                return fresh[victim] > 0

            await wait_until(victim_serves_again, timeout=15)
            phase["stop"] = True
            await asyncio.gather(*tasks)

        assert not failures, f"client requests failed: {dict(failures)}"
        assert cut[0] <= 2, f"{cut[0]} responses were cut mid-body: more than the kill's in-flight race explains"
        moved = [wid for wid, home in homes.items() if home == victim]
        assert moved
        for wid in moved:
            after = [inst for t, inst in served[wid] if killed_at + 0.5 < t < restarted_at]
            assert after and victim not in after, (wid, after)
            assert len(set(after)) == 1, f"{wid} did not settle on one instance: {after}"
        for wid, home in homes.items():
            if home != victim:  # unaffected workflows never moved
                assert {inst for _, inst in served[wid]} == {home}
        assert fresh[victim] >= 1, fresh


async def test_overloaded_instance_gets_no_new_workflows() -> None:
    with Stack(stack_options(with_a2a=False, sim_args=("--max-num-seqs", "4"))) as stack:
        victim = "vllm-2"
        async with httpx.AsyncClient(timeout=60) as client:
            # Saturate one instance directly (as other gateways' traffic would): 4 running, 8 waiting.
            hog = [asyncio.create_task(client.post(f"{stack.simulator_url(victim)}/v1/completions",
                                                   json=body(None, f"hog {i}", max_tokens=40_000)))
                   for i in range(12)]

            async def saturated() -> bool:
                stats = (await client.get(f"{stack.simulator_url(victim)}/sim/stats")).json()
                return stats["num_waiting"] >= 4
            await wait_until(saturated)
            await asyncio.sleep(0.3)  # at least one poll interval
            placed = Counter()
            for i in range(12):
                r = await client.post(f"{stack.url}/v1/completions", json=body(f"ov-{i}", "hello"))
                assert r.status_code == 200
                placed[r.headers["x-served-by"]] += 1
            for task in hog:
                task.cancel()
            await asyncio.gather(*hog, return_exceptions=True)
        assert victim not in placed, placed
        assert len(placed) == 2


async def test_requests_without_metadata_follow_their_prefix() -> None:
    with Stack(stack_options(with_a2a=False)) as stack:
        async with httpx.AsyncClient(timeout=30) as client:
            results = {}
            for group in ("alpha", "beta", "gamma"):
                prefix = f"System prompt of team {group}. " * 3 + CONTEXT
                responses = [await client.post(f"{stack.url}/v1/completions",
                                               json=body(None, f"{prefix}\nQuestion {i} from {group}?"))
                             for i in range(5)]
                assert all(r.status_code == 200 for r in responses)
                results[group] = responses
        for group, responses in results.items():
            assert len({r.headers["x-served-by"] for r in responses}) == 1, group
            cached = [r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] for r in responses]
            assert all(c > 0 for c in cached[1:]), (group, cached)
        # Different prefixes still spread over the fleet.
        assert len({rs[0].headers["x-served-by"] for rs in results.values()}) >= 2


async def test_hung_instance_is_marked_down_from_retried_attempts_and_its_workflow_moves() -> None:
    """A hung engine whose /health still answers: the poller sees nothing wrong. With Envoy's per-try idle
    timeout each attempt on it is reset and retried on another instance; the observer sees x-served-by differ
    from the routed instance, counts it as a failed attempt and, after three, holds the instance down, so the
    workflow moves (a failover) instead of paying an idle timeout on every request."""
    with Stack(stack_options(with_a2a=False, per_try_idle_timeout_s=0.5)) as stack:
        async with httpx.AsyncClient(timeout=30) as client:
            workflow_id = f"hang-{uuid.uuid4().hex[:6]}"
            first = await client.post(f"{stack.url}/v1/completions", json=body(workflow_id, CONTEXT))
            assert first.status_code == 200
            victim = first.headers["x-served-by"]
            hang = await client.post(f"{stack.simulator_url(victim)}/sim/faults", json={"hang": True})
            assert hang.status_code == 200
            served = []
            for step in range(6):
                r = await client.post(f"{stack.url}/v1/completions", json=body(workflow_id, f"{CONTEXT} step {step}"))
                assert r.status_code == 200, r.text  # retried on another instance: never lost
                served.append(r.headers["x-served-by"])
            assert victim not in served
            metrics = (await client.get(f"http://127.0.0.1:{stack.extprocs[0].ports['metrics']}/metrics")).text
            assert f'extproc_instance_healthy{{instance="{victim}"}} 0.0' in metrics
            failovers = [line for line in metrics.splitlines()
                         if line.startswith("extproc_routing_decisions_total") and 'reason="failover"' in line]
            assert failovers and any(float(line.rsplit(" ", 1)[1]) >= 1 for line in failovers), failovers
            # After the failover the workflow stays on its new instance.
            assert len(set(served[3:])) == 1, served
