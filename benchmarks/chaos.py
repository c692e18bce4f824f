"""Fault injection under load: a steady mixed load through the real Envoy of a ``Stack`` while one part of the
stack is killed, hung, slowed or restarted; what the clients saw is measured and printed as one table row per
scenario.

``python -m benchmarks.chaos [--scenario NAME|all] [--seconds N]`` (``--list`` names the scenarios). The tests in
``tests/resilience/`` run the same scenarios and assert their outcome; docs/resilience.md explains each one.

The load (``MixedLoad``): closed-loop workers, each with its own deadline per attempt (httpx timeouts) and a
bounded retry with backoff (connection errors, timeouts, 429/5xx):
- ``llm_wf``: completions with ``workflow_metadata`` (one workflow per worker, a shared context),
- ``llm_plain``: completions without metadata,
- ``a2a_send`` / ``a2a_recv`` / ``a2a_ack``: A2A messages through Envoy's ``/v1/workflows`` route, received with
  ``ack=true`` and acknowledged; every payload carries a unique ``mid`` so deliveries can be counted exactly.

Pure accounting (``summarize``, ``recovery_time``, ``rate``, ``format_table``) is separate from the I/O.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.stack import Stack, StackOptions
from extproc.config import FALLBACK_HEADER, SERVED_BY_HEADER

LLM_KINDS = ("llm_wf", "llm_plain")
A2A_KINDS = ("a2a_send", "a2a_recv", "a2a_ack")
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
CONTEXT = " ".join(f"ledger line {i}: account {i * 7 % 23} moved {i * 13 % 97} units." for i in range(40))
# Consecutive normal calls (first attempt, not via the fallback route) that count as "recovered".
RECOVERY_RUN = 5
DEFAULT_FAULT_S = 2.0
DEFAULT_TIME_SCALE = 0.01
# LLM routes of the chaos stacks: a hung instance's attempt is reset after this long and retried elsewhere. The
# simulated generations take milliseconds at the time scale above; real fleets need minutes (see the docs).
CHAOS_PER_TRY_IDLE_TIMEOUT_S = 1.0


# --- values -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    # The deadline, not the count, is the usual bound: at the capped backoff 80 attempts take ~30 s. It outlasts
    # a restart of both A2A replicas on a busy 2-core machine (up to ~10 s measured).
    attempts: int = 80
    base_backoff_s: float = 0.05
    max_backoff_s: float = 0.5
    deadline_s: float = 25.0  # no new attempt after this long (plus one attempt's own timeout at most)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return min(self.max_backoff_s, self.base_backoff_s * 2 ** (attempt - 1)) * (0.5 + rng.random() / 2)


@dataclass(frozen=True, slots=True)
class Call:
    """One client call, after its retries."""

    kind: str
    started: float
    ended: float
    ok: bool
    errors: tuple[str, ...]  # the error kind of every failed attempt ("connect", "timeout", "503", ...)
    served_by: str | None = None
    fallback: bool = False
    workflow: str | None = None

    @property
    def attempts(self) -> int:
        return len(self.errors) + (1 if self.ok else 0)

    @property
    def normal(self) -> bool:
        return self.ok and not self.errors and not self.fallback


@dataclass(slots=True)
class Messages:
    """Exactly-once accounting of A2A messages by their payload id (``mid``)."""

    confirmed: set[str] = field(default_factory=set)  # the send was answered 2xx
    delivered: Counter[str] = field(default_factory=Counter)  # mid -> deliveries seen by receivers
    message_ids: dict[str, set[str]] = field(default_factory=dict)  # mid -> service message ids delivered
    redelivered: Counter[str] = field(default_factory=Counter)  # message_id -> deliveries beyond the first
    unacked: set[str] = field(default_factory=set)  # message ids whose ack failed or found no lease
    ambiguous_sends: set[str] = field(default_factory=set)  # mids whose send had a transport error, then retried

    def lost(self) -> set[str]:
        return {mid for mid in self.confirmed if self.delivered[mid] == 0}

    def duplicated(self) -> int:
        return sum(n - 1 for n in self.delivered.values() if n > 1)

    def contract_violations(self) -> set[str]:
        """Message ids delivered more than once although their ack had succeeded (at-least-once allows a
        redelivery only of a message that was not acknowledged in time)."""
        return {mid for mid in self.redelivered if mid not in self.unacked}


@dataclass(frozen=True, slots=True)
class Window:
    load_start: float
    fault_start: float
    fault_end: float
    load_end: float


@dataclass(slots=True)
class ScenarioResult:
    name: str
    sent: int = 0  # LLM calls
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # final error kind of LLM calls that failed
    failed_attempts: Counter[str] = field(default_factory=Counter)  # every failed attempt, all kinds
    a2a_failed: Counter[str] = field(default_factory=Counter)  # A2A calls that failed after their retries
    fallback: int = 0
    rps_before: float = 0.0
    rps_during: float = 0.0
    msgs_sent: int = 0
    msgs_delivered: int = 0
    msgs_lost: int = 0
    msgs_duplicated: int = 0
    recovery_s: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    window: Window | None = None

    @property
    def held(self) -> float:
        return self.rps_during / self.rps_before if self.rps_before else 0.0


# --- pure accounting --------------------------------------------------------------------------------------------
def rate(calls: Iterable[Call], start: float, end: float, kinds: Sequence[str] = LLM_KINDS) -> float:
    """Successful calls of ``kinds`` that ended in [start, end), per second."""
    if end <= start:
        return 0.0
    return sum(1 for c in calls if c.kind in kinds and c.ok and start <= c.ended < end) / (end - start)


def recovery_time(calls: Iterable[Call], after: float, kinds: Sequence[str] = LLM_KINDS,
                  run: int = RECOVERY_RUN) -> float | None:
    """Seconds from ``after`` to the start of the first ``run`` consecutive normal calls started after it
    (``None``: never within the measurement)."""
    ordered = sorted((c for c in calls if c.kind in kinds and c.started >= after), key=lambda c: c.started)
    streak = 0
    for index, call in enumerate(ordered):
        streak = streak + 1 if call.normal else 0
        if streak == run:
            return max(0.0, ordered[index - run + 1].started - after)
    return None


def summarize(name: str, calls: Sequence[Call], messages: Messages, window: Window,
              recovery_kinds: Sequence[str] = LLM_KINDS) -> ScenarioResult:
    llm = [c for c in calls if c.kind in LLM_KINDS]
    result = ScenarioResult(name=name, sent=len(llm), ok=sum(c.ok for c in llm), window=window)
    result.failed.update(c.errors[-1] for c in llm if not c.ok and c.errors)
    result.failed.update("unknown" for c in llm if not c.ok and not c.errors)
    for call in calls:
        result.failed_attempts.update(f"{call.kind}:{e}" for e in call.errors)
        if call.kind in A2A_KINDS and not call.ok:
            result.a2a_failed[f"{call.kind}:{call.errors[-1] if call.errors else 'unknown'}"] += 1
    result.fallback = sum(c.fallback for c in llm)
    warm = window.load_start + 0.3 * (window.fault_start - window.load_start)  # skip the ramp-up
    result.rps_before = rate(calls, warm, window.fault_start)
    result.rps_during = rate(calls, window.fault_start, max(window.fault_end, window.fault_start + 0.5))
    result.msgs_sent = len(messages.confirmed)
    result.msgs_delivered = sum(1 for mid in messages.confirmed if messages.delivered[mid])
    result.msgs_lost = len(messages.lost())
    result.msgs_duplicated = messages.duplicated()
    result.recovery_s = recovery_time(calls, window.fault_end, recovery_kinds)
    return result


def _counter_text(counter: Counter[str], limit: int = 3) -> str:
    if not counter:
        return "0"
    top = ", ".join(f"{k} {v}" for k, v in counter.most_common(limit))
    more = len(counter) - limit
    return f"{sum(counter.values())} ({top}{', …' if more > 0 else ''})"


COLUMNS = ("scenario", "LLM sent", "ok", "failed", "A2A failed", "failed attempts (all)", "via fallback",
           "req/s before → during", "msgs sent/deliv/lost/dup", "recovery s", "notes")


def format_row(r: ScenarioResult) -> list[str]:
    recovery = "never" if r.recovery_s is None else f"{r.recovery_s:.2f}"
    notes = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.notes.items())
    return [r.name, str(r.sent), str(r.ok), _counter_text(r.failed), _counter_text(r.a2a_failed),
            _counter_text(r.failed_attempts),
            str(r.fallback), f"{r.rps_before:.0f} → {r.rps_during:.0f} ({r.held:.0%})",
            f"{r.msgs_sent}/{r.msgs_delivered}/{r.msgs_lost}/{r.msgs_duplicated}", recovery, notes]


def format_table(results: Iterable[ScenarioResult]) -> str:
    rows = [list(COLUMNS), *(format_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _error_kind(response: httpx.Response) -> str:
    code: object = None
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        code = response.json()["error"]["code"]
    if isinstance(code, str) and code and not code.isdigit():
        return f"{response.status_code}:{code}"
    return str(response.status_code)


def _transport_kind(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    return type(exc).__name__


# --- the load ---------------------------------------------------------------------------------------------------
class MixedLoad:
    """Closed-loop mixed load through ``url`` (an Envoy listener). ``async with MixedLoad(url) as load:`` starts
    it; ``await load.stop()`` stops the senders and drains the receivers; ``load.calls`` / ``load.messages``
    hold what happened."""

    def __init__(
        self, url: str, *, workflows: int = 6, plain: int = 2, a2a_pairs: int = 2, pace_s: float = 0.02,
        request_timeout_s: float = 5.0, visibility_timeout_s: float = 1.0, retry: RetryPolicy | None = None,
        seed: int = 7,
    ) -> None:
        self.url = url
        self.run = uuid.uuid4().hex[:8]
        self.workflows = [f"chaos-{self.run}-wf-{i}" for i in range(workflows)]
        self.plain = plain
        self.a2a_workflows = [f"chaos-{self.run}-a2a-{i}" for i in range(a2a_pairs)]
        self.pace_s = pace_s
        self.visibility_timeout_s = visibility_timeout_s
        self.retry = retry or RetryPolicy()
        self.rng = random.Random(seed)
        self.calls: list[Call] = []
        self.messages = Messages()
        self._timeout = httpx.Timeout(request_timeout_s, connect=1.0)
        self._client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_senders = False
        self._stop_receivers = False
        self._paused: set[str] = set()  # "send" / "recv": those A2A workers wait
        self._busy: Counter[str] = Counter()
        self._mids = itertools.count()
        self.started_at = 0.0

    async def __aenter__(self) -> MixedLoad:
        self._client = httpx.AsyncClient(timeout=self._timeout, limits=httpx.Limits(max_connections=200))
        self.started_at = time.monotonic()
        workers: list[Awaitable[None]] = [self._llm_worker(w) for w in self.workflows]
        workers += [self._llm_worker(None) for _ in range(self.plain)]
        for wf in self.a2a_workflows:
            workers += [self._sender(wf), self._receiver(wf)]
        self._tasks = [asyncio.create_task(w) for w in workers]  # type: ignore[arg-type]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(drain=False)

    # --- control ------------------------------------------------------------------------------------------
    async def pause_a2a(self, *which: str, timeout: float = 10.0) -> None:
        """Hold the A2A workers named ("send", "recv") and wait until none of them has a call in flight."""
        self._paused.update(which)
        deadline = time.monotonic() + timeout
        while any(self._busy[w] for w in which) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def resume_a2a(self) -> None:
        self._paused.clear()

    async def stop(self, drain: bool = True, drain_cap_s: float = 8.0) -> None:
        self._stop_senders = True
        self._paused.discard("send")
        if drain:
            self._paused.clear()
            # Receivers keep going until nothing arrived for longer than a lease (redeliveries included).
            quiet_for = self.visibility_timeout_s + 0.7
            deadline = time.monotonic() + drain_cap_s
            seen = -1
            last_change = time.monotonic()
            while time.monotonic() < deadline:
                now_seen = sum(self.messages.delivered.values())
                if now_seen != seen:
                    seen, last_change = now_seen, time.monotonic()
                elif time.monotonic() - last_change > quiet_for:
                    break
                await asyncio.sleep(0.1)
        self._stop_receivers = True
        self._paused.clear()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.retry.deadline_s + 5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- one call with retries ----------------------------------------------------------------------------
    async def _call(self, kind: str, send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]],
                    workflow: str | None = None) -> tuple[httpx.Response | None, Call]:
        assert self._client is not None
        started = time.monotonic()
        errors: list[str] = []
        response: httpx.Response | None = None
        for attempt in range(1, self.retry.attempts + 1):
            try:
                response = await send(self._client)
            except httpx.HTTPError as exc:
                errors.append(_transport_kind(exc))
                response = None
            else:
                if response.status_code < 400:
                    break
                errors.append(_error_kind(response))
                if response.status_code not in RETRYABLE_STATUS:
                    break
            if attempt == self.retry.attempts or time.monotonic() - started > self.retry.deadline_s:
                break
            await asyncio.sleep(self.retry.backoff(attempt, self.rng))
        ok = response is not None and response.status_code < 400
        headers = response.headers if response is not None else {}
        call = Call(kind, started, time.monotonic(), ok, tuple(errors), headers.get(SERVED_BY_HEADER),
                    headers.get(FALLBACK_HEADER) == "true", workflow)
        self.calls.append(call)
        return (response if ok else None), call

    # --- workers ------------------------------------------------------------------------------------------
    async def _llm_worker(self, workflow: str | None) -> None:
        step = 0
        while not self._stop_senders:
            body: dict[str, Any] = {"model": "m", "max_tokens": 4,
                                    "prompt": f"{workflow or 'anon-' + self.run} {CONTEXT} step {step}"}
            if workflow is not None:
                body["workflow_metadata"] = {"workflow_id": workflow, "agent_id": f"agent-{step % 3}"}
            await self._call("llm_wf" if workflow else "llm_plain",
                             lambda c, b=body: c.post(f"{self.url}/v1/completions", json=b), workflow)
            step += 1
            await asyncio.sleep(self.pace_s)

    async def _wait_unpaused(self, role: str, stop: Callable[[], bool]) -> None:
        while role in self._paused and not stop():
            await asyncio.sleep(0.01)

    async def _sender(self, workflow: str) -> None:
        url = f"{self.url}/v1/workflows/{workflow}/messages"
        while not self._stop_senders:
            await self._wait_unpaused("send", lambda: self._stop_senders)
            if self._stop_senders:
                break
            mid = f"{self.run}-{next(self._mids)}"
            body = {"source_agent": "producer", "target_agent": "consumer", "message_type": "data",
                    "payload": {"mid": mid}, "ttl": 300}
            self._busy["send"] += 1
            try:
                response, call = await self._call("a2a_send", lambda c, b=body: c.post(url, json=b), workflow)
            finally:
                self._busy["send"] -= 1
            if response is not None:
                self.messages.confirmed.add(mid)
                if any(not e[:1].isdigit() for e in call.errors):
                    self.messages.ambiguous_sends.add(mid)
            await asyncio.sleep(self.pace_s)

    async def _receiver(self, workflow: str) -> None:
        url = f"{self.url}/v1/workflows/{workflow}/agents/consumer/messages"
        params = {"ack": "true", "visibility_timeout": str(self.visibility_timeout_s), "timeout": "0.5",
                  "max_messages": "20"}
        while not self._stop_receivers:
            await self._wait_unpaused("recv", lambda: self._stop_receivers)
            if self._stop_receivers:
                break
            self._busy["recv"] += 1
            try:
                await self._receive_once(url, params, workflow)
            finally:
                self._busy["recv"] -= 1

    async def _receive_once(self, url: str, params: dict[str, str], workflow: str) -> None:
        response, _ = await self._call("a2a_recv", lambda c: c.get(url, params=params), workflow)
        if response is None:
            await asyncio.sleep(self.pace_s)
            return
        ids: list[str] = []
        for message in response.json().get("messages", []):
            payload = message.get("payload")
            mid = payload.get("mid") if isinstance(payload, dict) else None
            if not isinstance(mid, str):
                continue
            message_id = str(message["message_id"])
            seen = self.messages.message_ids.setdefault(mid, set())
            if message_id in seen:
                self.messages.redelivered[message_id] += 1
            seen.add(message_id)
            self.messages.delivered[mid] += 1
            ids.append(message_id)
        if ids:
            ack, _ = await self._call("a2a_ack", lambda c: c.post(f"{url}/ack", json={"message_ids": ids}),
                                      workflow)
            if ack is None:
                self.messages.unacked.update(ids)
            else:
                self.messages.unacked.update(ack.json().get("not_found", []))


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


# --- CLI --------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scenario", default="all", choices=[*SCENARIOS, "all"], metavar="NAME|all",
                        help=f"one of {', '.join(SCENARIOS)} or 'all'")
    parser.add_argument("--seconds", type=_seconds, default=DEFAULT_FAULT_S,
                        help="length of each fault window (0.5-60; some scenarios need a minimum, see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.5 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be between 0.5 and 60, got {value:g}")
    return value


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


async def _main(names: Sequence[str], seconds: float) -> list[ScenarioResult]:
    results: list[ScenarioResult] = []
    for kind in ("memory", "redis"):
        wanted = [n for n in names if SCENARIOS[n].stack == kind]
        if not wanted:
            continue
        with Stack(stack_options(kind)) as stack:
            for name in wanted:
                result, _ = await run_named(name, stack, seconds)
                results.append(result)
                print(f"done: {name}", file=sys.stderr, flush=True)
    order = list(names)
    return sorted(results, key=lambda r: order.index(r.name))


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parse(argv)
    if ns.list:
        for scenario in SCENARIOS.values():
            minimum = f" (window >= {scenario.min_fault_s:g} s)" if scenario.min_fault_s else ""
            print(f"{scenario.name:<22} [{scenario.stack} stack] {scenario.summary}{minimum}")
        return 0
    names = list(SCENARIOS) if ns.scenario == "all" else [ns.scenario]
    print(format_table(asyncio.run(_main(names, ns.seconds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
