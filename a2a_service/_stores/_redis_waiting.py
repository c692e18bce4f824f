"""The Redis store's waiting receivers: wake-ups through pub/sub and serving each line of waiters.

A long-poll waits in this process (a ``WaitingLines`` line per queue, as in the memory store), never in a
blocking Redis command. ``_serve`` runs the receive script for the head of a line until the queue or the line
is empty; it runs again when a wake-up names the queue (pub/sub), when a lease of the queue ends (a timer), or
every ``RESYNC_INTERVAL`` as a backstop for lost wake-ups. ``RedisStore`` supplies the Redis calls (``_take``,
``release``) and the error translation (``_unavailable``); see ``_redis`` for the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis

from .._types import Delivery
from .._validation import sanitize_for_log
from ..errors import A2AError, StoreUnavailableError
from ._redis_codec import describe
from ._waiters import Key, LeaseTimers, Waiter, WaitingLines

log = logging.getLogger("a2a_service.store")

RESYNC_INTERVAL = 5.0  # every waiting line is served again this often (backstop for lost pub/sub messages)
_WAIT_MARGIN_MS = 1000


class WaitingReceivers:
    """Base of ``RedisStore``: its waiting lines, lease timers, wake-up subscription and the tasks serving
    the lines. The methods below the state are what the store implements."""

    replica_id: str
    _closing: bool
    _clock: Callable[[], float]
    _wake_redis: aioredis.Redis
    _channel: str

    def __init__(self) -> None:
        self._waiters = WaitingLines()
        self._serving: dict[Key, asyncio.Task[None]] = {}
        self._dirty: set[Key] = set()
        self._lease_timers = LeaseTimers()
        self._background: set[asyncio.Task[Any]] = set()
        self._subscribed = asyncio.Event()

    async def _take(
        self, workflow_id: str, agent_id: str, max_messages: int, visibility_timeout: float | None, wait_ms: int
    ) -> tuple[list[Delivery], float | None]:
        """Run the receive script once: the messages taken and the queue's next lease end."""
        raise NotImplementedError

    async def release(self, workflow_id: str, agent_id: str, deliveries: Sequence[Delivery]) -> None:
        raise NotImplementedError

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        raise NotImplementedError

    async def _resync_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(RESYNC_INTERVAL)
            for key in list(self._waiters):
                self._kick(key)

    async def _listen_forever(self) -> None:
        """Keep one subscription to the wake-up channel; serve the lines its messages name."""
        delay = 0.05
        lost = False
        # The loops also watch the closing flag: redis-py's get_message(timeout=...) can swallow a cancellation
        # (it returns None), which would keep this task alive and hang close().
        while not self._closing:
            pubsub = self._wake_redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                delay = 0.05
                if lost:
                    log.info("wake-up subscription restored")
                    lost = False
                for key in list(self._waiters):  # wake-ups published while unsubscribed were lost
                    self._kick(key)
                while not self._closing:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_wake(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._subscribed.clear()
                if not lost:
                    log.warning("wake-up subscription lost; retrying", extra={"error": describe(exc)})
                    lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call,unused-ignore]  # unannotated before redis-py 8.2

    def _on_wake(self, data: bytes) -> None:
        parts = data.decode(errors="replace").split("|")
        if len(parts) < 3 or parts[0] == self.replica_id:
            return  # this replica's own sends already served its waiters
        workflow_id = parts[1]
        for agent in parts[2:]:
            if (workflow_id, agent) in self._waiters:
                self._kick((workflow_id, agent))

    # ------------------------------------------------------------------ serving waiting receivers

    def _kick(self, key: Key) -> None:
        """Serve the line of ``key`` (now, or once more after the receive script in flight)."""
        if key in self._serving:
            self._dirty.add(key)
        elif self._waiters.get(key):
            self._serving[key] = asyncio.get_running_loop().create_task(self._serve(key))

    async def _serve(self, key: Key) -> None:
        """Run the receive script for the head of the line until the queue or the line is empty. Waiters
        that only look once get [] from an empty answer to a script that started after they arrived."""
        workflow_id, agent_id = key
        try:
            while True:
                self._dirty.discard(key)
                line = self._waiters.get(key)
                while line and line[0].future.done():
                    line.popleft()
                if not line:
                    return
                head = line[0]
                started = self._waiters.next_ticket()
                try:
                    out, next_lease = await self._take(
                        workflow_id, agent_id, head.max_messages, head.visibility_timeout, self._wait_ms(line)
                    )
                except StoreUnavailableError as exc:
                    for waiter in list(line):
                        waiter.fail(exc)
                    continue
                except A2AError as exc:  # e.g. too many workflows: this receive is refused, like in memory
                    head.fail(exc)
                    continue
                except Exception:
                    log.exception("receive failed")
                    head.fail(A2AError("internal error"))
                    continue
                if out:
                    if head.future.done():  # timed out or cancelled while the script ran
                        await self._release_quietly(workflow_id, agent_id, out)
                    else:
                        head.future.set_result(out)
                        with contextlib.suppress(ValueError):
                            line.remove(head)
                    continue
                for waiter in list(line):
                    if waiter.once and waiter.ticket < started:
                        waiter.answer([])
                if next_lease is not None:
                    self._arm_lease_timer(key, next_lease)
                if key in self._dirty or any(w.once and not w.future.done() for w in line):
                    continue
                return
        finally:
            self._serving.pop(key, None)

    def _wait_ms(self, line: Iterable[Waiter]) -> int:
        """How long the queue must stay marked as waited on (0: nobody here will wait)."""
        deadline = max((w.deadline for w in line if not w.once and not w.future.done()), default=None)
        if deadline is None:
            return 0
        return max(0, int((deadline - asyncio.get_running_loop().time()) * 1000)) + _WAIT_MARGIN_MS

    def _give_up(self, waiter: Waiter) -> None:
        """A waiter's time is up: a long-poll answers ``[]``, a single look that got no answer a 503."""
        if waiter.done:
            return
        if waiter.once:
            waiter.fail(self._unavailable(TimeoutError("no answer from Redis in time")))
        else:
            waiter.answer([])

    def _arm_lease_timer(self, key: Key, deadline: float) -> None:
        """Serve the line again when the queue's earliest lease ends (one timer per queue)."""
        if self._closing or key not in self._waiters:
            return
        self._lease_timers.arm(key, deadline - self._clock(), self._on_lease_timer)

    def _on_lease_timer(self, key: Key) -> None:
        self._lease_timers.fired(key)
        if key in self._waiters:
            self._kick(key)

    async def _release_quietly(self, workflow_id: str, agent_id: str, deliveries: Sequence[Delivery]) -> None:
        try:
            await self.release(workflow_id, agent_id, deliveries)
        except A2AError as exc:
            log.warning(
                "could not put back messages a receiver never got",
                extra={"workflow_id": sanitize_for_log(workflow_id), "count": len(deliveries), "error": exc.message},
            )

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
