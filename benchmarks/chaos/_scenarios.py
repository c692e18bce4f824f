"""The scenarios: each injects one fault into a running ``Stack`` under a ``MixedLoad``; ``run_scenario`` measures
what the clients saw. Also the two shared stacks they run on."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.chaos._accounting import LLM_KINDS, Call, ScenarioResult, Window, recovery_time, summarize
from benchmarks.chaos._load import MixedLoad
from benchmarks.stack import Stack, StackOptions

DEFAULT_FAULT_S = 2.0
DEFAULT_TIME_SCALE = 0.01
# LLM routes of the chaos stacks: a hung instance's attempt is reset after this long and retried elsewhere. The
# simulated generations take milliseconds at the time scale above; real fleets need minutes (see the docs).
CHAOS_PER_TRY_IDLE_TIMEOUT_S = 1.0


# --- helpers on a running stack ---------------------------------------------------------------------------------
async def envoy_stats(stack: Stack, pattern: str) -> dict[str, int]:
    """Envoy counters whose name matches the regex ``pattern``."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{stack.admin_url}/stats", params={"filter": pattern})).text
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def homes(calls: Iterable[Call], before: float) -> dict[str, str]:
    """Each workflow's instance: where its last successful, normally routed call before ``before`` went."""
    out: dict[str, str] = {}
    for call in sorted(calls, key=lambda c: c.ended):
        if call.kind == "llm_wf" and call.normal and call.ended < before and call.workflow and call.served_by:
            out[call.workflow] = call.served_by
    return out


def served_during(calls: Iterable[Call], workflow: str, start: float, end: float) -> int:
    return sum(1 for c in calls if c.workflow == workflow and c.ok and c.started >= start and c.ended <= end)


async def _set_faults(stack: Stack, instance: str, **faults: object) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(f"{stack.simulator_url(instance)}/sim/faults", json=faults)
        response.raise_for_status()


async def _a2a_queued(stack: Stack, workflows: Sequence[str]) -> int:
    total = 0
    async with httpx.AsyncClient(timeout=5) as client:
        for wf in workflows:
            response = await client.get(f"{stack.url}/v1/workflows/{wf}/status")
            if response.status_code == 200:
                status = response.json()
                total += int(status["queued_messages"]) + int(status["in_flight_messages"])
    return total


# --- scenarios --------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Run:
    """What a scenario's fault step sees and may annotate."""

    stack: Stack
    load: MixedLoad
    fault_s: float
    notes: dict[str, Any] = field(default_factory=dict)
    recovery_kinds: Sequence[str] = LLM_KINDS


Fault = Callable[[Run], Awaitable[None]]


async def run_scenario(name: str, stack: Stack, fault: Fault, *, fault_s: float = DEFAULT_FAULT_S,
                       warmup_s: float = 1.2, after_s: float = 1.0, recovery_kinds: Sequence[str] = LLM_KINDS,
                       load: MixedLoad | None = None) -> tuple[ScenarioResult, MixedLoad]:
    """Warm up, run ``fault`` (it marks nothing: the window is the time the coroutine takes), let the stack
    recover, stop and drain, summarize."""
    load = load or MixedLoad(stack.url)
    async with load:
        await asyncio.sleep(warmup_s)
        run = Run(stack, load, fault_s, recovery_kinds=recovery_kinds)
        fault_start = time.monotonic()
        await fault(run)
        fault_end = time.monotonic()
        # Recovered = RECOVERY_RUN normal calls in a row; wait for that (bounded), then a little more load.
        deadline = fault_end + after_s + 5.0
        while recovery_time(load.calls, fault_end, run.recovery_kinds) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(after_s)
        load_end = time.monotonic()
        await load.stop()
    result = summarize(name, load.calls, load.messages, Window(load.started_at, fault_start, fault_end, load_end),
                       run.recovery_kinds)
    result.notes.update(run.notes)
    result.notes.setdefault("fault_s", round(fault_end - fault_start, 2))
    return result, load


async def fault_extproc_kill(run: Run) -> None:
    """SIGKILL ext_proc replica 0, restart it after the fault window."""
    run.stack.extprocs[0].kill()
    await asyncio.sleep(run.fault_s)
    await asyncio.to_thread(run.stack.restart_extproc, 0)


async def fault_extproc_kill_replica(run: Run) -> None:
    """SIGKILL the last ext_proc replica (others keep serving), restart it after the window."""
    index = len(run.stack.extprocs) - 1
    run.stack.extprocs[index].kill()
    await asyncio.sleep(run.fault_s)
    await asyncio.to_thread(run.stack.restart_extproc, index)


def _victim(run: Run) -> str:
    found = homes(run.load.calls, time.monotonic())
    counts = Counter(found.values())
    victim = counts.most_common(1)[0][0] if counts else next(iter(run.stack.simulators))
    run.notes["victim"] = victim
    run.notes["victim_workflows"] = counts.get(victim, 0)
    return victim


async def fault_instance_kill(run: Run) -> None:
    victim = _victim(run)
    run.stack.kill_simulator(victim)
    await asyncio.sleep(run.fault_s)
    await asyncio.to_thread(run.stack.restart_simulator, victim)


async def fault_instance_hang(run: Run) -> None:
    victim = _victim(run)
    names = {"idle_timeouts": f"cluster.{victim}.upstream_rq_per_try_idle_timeout",
             "ejections": f"cluster.{victim}.outlier_detection.ejections_enforced_total"}
    pattern = "^(" + "|".join(n.replace(".", r"\.") for n in names.values()) + ")$"
    before = await envoy_stats(run.stack, pattern)
    failovers_before = await _failovers(run.stack)
    await _set_faults(run.stack, victim, hang=True)
    await asyncio.sleep(run.fault_s)
    await _set_faults(run.stack, victim, hang=False)
    after = await envoy_stats(run.stack, pattern)
    for note, stat in names.items():
        run.notes[note] = after.get(stat, 0) - before.get(stat, 0)
    # Attempts retried away from the hung instance make the router hold it down and move its workflows.
    run.notes["failovers"] = int(await _failovers(run.stack) - failovers_before)


async def _failovers(stack: Stack) -> float:
    total = 0.0
    async with httpx.AsyncClient(timeout=5) as client:
        for process in stack.extprocs:
            text = (await client.get(f"http://127.0.0.1:{process.ports['metrics']}/metrics")).text
            total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("extproc_routing_decisions_total{") and 'reason="failover"' in line)
    return total


async def fault_instance_freeze(run: Run) -> None:
    """SIGSTOP the busiest instance: the kernel still accepts connections, nothing answers, /health included."""
    victim = _victim(run)
    before = await _failovers(run.stack)
    process = run.stack.simulators[victim].popen
    process.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(run.fault_s)
    finally:
        process.send_signal(signal.SIGCONT)
    run.notes["failovers"] = int(await _failovers(run.stack) - before)


async def fault_instance_slow(run: Run) -> None:
    victim = _victim(run)
    await _set_faults(run.stack, victim, slowdown=10.0)
    await asyncio.sleep(run.fault_s)
    await _set_faults(run.stack, victim, slowdown=1.0)


async def fault_a2a_kill_quiesced(run: Run) -> None:
    """Let a backlog build (receivers held), quiesce the A2A clients, count what is queued, SIGKILL every A2A
    replica, resume the clients (they retry), restart the replicas after the window."""
    load = run.load
    await load.pause_a2a("recv")
    await asyncio.sleep(0.5)
    await load.pause_a2a("send", "recv")
    run.notes["queued_at_kill"] = len(load.messages.confirmed) - sum(
        1 for mid in load.messages.confirmed if load.messages.delivered[mid])
    run.notes["queued_by_status"] = await _a2a_queued(run.stack, load.a2a_workflows)
    for index in range(len(run.stack.a2as)):
        run.stack.kill_a2a(index)
    load.resume_a2a()
    await asyncio.sleep(run.fault_s)
    for index in range(len(run.stack.a2as)):
        await asyncio.to_thread(run.stack.restart_a2a, index)


async def fault_a2a_kill_live(run: Run) -> None:
    """SIGKILL every A2A replica under live traffic (leases held by the dead replicas included)."""
    for index in range(len(run.stack.a2as)):
        run.stack.kill_a2a(index)
    await asyncio.sleep(run.fault_s)
    for index in range(len(run.stack.a2as)):
        await asyncio.to_thread(run.stack.restart_a2a, index)


async def fault_redis_restart(run: Run) -> None:
    assert run.stack.redis is not None
    run.stack.redis.kill()
    await asyncio.sleep(run.fault_s)
    await asyncio.to_thread(run.stack.restart_redis)


async def fault_envoy_restart(run: Run) -> None:
    await asyncio.to_thread(run.stack.restart_envoy)
    run.notes["envoy_pid"] = run.stack.envoy.popen.pid if run.stack.envoy else 0


async def fault_envoy_hot_restart(run: Run) -> None:
    await asyncio.to_thread(run.stack.hot_restart_envoy)
    parent = run.stack.retired_envoys[-1]
    deadline = time.monotonic() + 15
    while parent.alive() and time.monotonic() < deadline:  # the window lasts until the old Envoy has drained
        await asyncio.sleep(0.1)
    run.notes["epoch"] = run.stack.envoy_epoch
    run.notes["parent_exited"] = not parent.alive()


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    stack: str  # "memory" or "redis": which shared stack it runs on
    fault: Fault
    summary: str
    recovery_kinds: Sequence[str] = LLM_KINDS
    min_fault_s: float = 0.0  # a shorter window would end before the effect under test


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("extproc-kill", "memory", fault_extproc_kill,
             "the only ext_proc SIGKILLed, restarted: failure_mode_allow serves without affinity"),
    Scenario("extproc-kill-replica", "redis", fault_extproc_kill_replica,
             "one of 2 ext_proc replicas (Redis registry) SIGKILLed, restarted"),
    Scenario("instance-kill", "memory", fault_instance_kill, "the busiest vLLM instance SIGKILLed, restarted"),
    Scenario("instance-hang", "memory", fault_instance_hang,
             "the busiest instance accepts requests and never answers (sim fault hang=true)"),
    Scenario("instance-freeze", "memory", fault_instance_freeze,
             "the busiest instance's process frozen (SIGSTOP): connections accepted, nothing answered",
             # the poller marks an instance down after 3 timed-out polls (0.5 s each): then workflows move
             min_fault_s=3.5),
    Scenario("instance-slow", "memory", fault_instance_slow, "the busiest instance 10x slower (sim slowdown=10)"),
    Scenario("a2a-kill-memory", "memory", fault_a2a_kill_quiesced,
             "the A2A service (memory store) SIGKILLed with a backlog, restarted", ("a2a_send",)),
    Scenario("a2a-kill-redis", "redis", fault_a2a_kill_live,
             "both A2A replicas (Redis store) SIGKILLed under traffic, restarted", ("a2a_send",)),
    Scenario("redis-restart", "redis", fault_redis_restart,
             "Redis SIGKILLed, restarted (AOF): ext_proc degraded mode, A2A 503 store_unavailable",
             ("a2a_send",)),
    Scenario("envoy-restart", "memory", fault_envoy_restart, "Envoy stopped and started again on its ports"),
    Scenario("envoy-hot-restart", "memory", fault_envoy_hot_restart,
             "Envoy hot restart (--restart-epoch + 1): the new process takes the sockets over"),
)}


def stack_options(kind: str, **overrides: Any) -> StackOptions:
    """The two shared stacks: "memory" (1 ext_proc, 1 A2A, memory stores) and "redis" (2 + 2 replicas on a
    private Redis with an append-only file). Free ports everywhere."""
    base: dict[str, Any] = {
        "instances": 3, "listen_port": 0, "admin_port": 0, "time_scale": DEFAULT_TIME_SCALE,
        "envoy_concurrency": 1, "log_level": "warning", "per_try_idle_timeout_s": CHAOS_PER_TRY_IDLE_TIMEOUT_S,
        "a2a_args": ("--max-message-queue-size", "5000"),
    }
    if kind == "redis":
        base.update(extproc_replicas=2, a2a_replicas=2, redis="private", redis_persistence=True)
    elif kind != "memory":
        raise ValueError(f"unknown stack kind {kind!r}")
    base.update(overrides)
    return StackOptions(**base)


async def run_named(name: str, stack: Stack, fault_s: float = DEFAULT_FAULT_S) -> tuple[ScenarioResult, MixedLoad]:
    scenario = SCENARIOS[name]
    return await run_scenario(name, stack, scenario.fault, fault_s=max(fault_s, scenario.min_fault_s),
                              recovery_kinds=scenario.recovery_kinds)
