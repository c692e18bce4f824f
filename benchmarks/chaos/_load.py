"""The load of a chaos run (``MixedLoad``): closed-loop LLM and A2A workers through Envoy, each call with its own
deadline per attempt and a bounded retry with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.chaos._accounting import Call, Messages
from extproc.config import FALLBACK_HEADER, SERVED_BY_HEADER

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
CONTEXT = " ".join(f"ledger line {i}: account {i * 7 % 23} moved {i * 13 % 97} units." for i in range(40))


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

