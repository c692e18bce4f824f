"""Receivers waiting on a queue, shared by both stores: lines in arrival order, the wait itself (timeout and
cancellation), and one lease timer per queue.

A store serves a line from its head (``_memory`` from the pure queue, ``_redis`` by running its receive
script); this module only keeps the lines and ends the waits. A receive that is cancelled after messages
were handed to it gives them back through the store's ``put_back``, so a caller that went away never
swallows messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from .._types import Delivery

Key = tuple[str, str]  # (workflow_id, agent_id)
# Lease timers fire this much after the deadline so that the (wall) clock has certainly passed it.
LEASE_SLACK = 0.005


class Waiter:
    """One waiting receive."""

    __slots__ = ("deadline", "future", "max_messages", "once", "ticket", "visibility_timeout")

    def __init__(
        self,
        future: asyncio.Future[list[Delivery]],
        max_messages: int,
        visibility_timeout: float | None,
        *,
        once: bool = False,
        ticket: int = 0,
        deadline: float = 0.0,
    ) -> None:
        self.future = future
        self.max_messages = max_messages
        self.visibility_timeout = visibility_timeout
        self.once = once  # answer after one look at the queue (timeout 0, or the store is closing)
        self.ticket = ticket  # order of arrival (the Redis store compares it with a script's start)
        self.deadline = deadline  # loop time at which a long-poll gives up

    @property
    def done(self) -> bool:
        return self.future.done()

    def answer(self, deliveries: list[Delivery]) -> None:
        if not self.future.done():
            self.future.set_result(deliveries)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def handed_over(future: asyncio.Future[list[Delivery]]) -> list[Delivery]:
    """What a finished wait was given (``[]`` if it was cancelled, failed or is still running)."""
    if future.done() and not future.cancelled() and future.exception() is None:
        return future.result()
    return []


class WaitingLines(dict[Key, deque[Waiter]]):
    """The lines of waiting receivers, by queue. A line exists only while it holds a waiter."""

    def __init__(self) -> None:
        super().__init__()
        self._tickets = 0

    def next_ticket(self) -> int:
        self._tickets += 1
        return self._tickets

    def join(
        self, key: Key, max_messages: int, visibility_timeout: float | None, *, once: bool = False,
        deadline: float = 0.0,
    ) -> Waiter:  # fmt: skip
        """A new waiter at the end of the line of ``key``."""
        future: asyncio.Future[list[Delivery]] = asyncio.get_running_loop().create_future()
        waiter = Waiter(
            future, max_messages, visibility_timeout, once=once, ticket=self.next_ticket(), deadline=deadline
        )
        line = self.get(key)
        if line is None:
            line = self[key] = deque()
        line.append(waiter)
        return waiter

    def leave(self, key: Key, waiter: Waiter) -> None:
        line = self.get(key)
        if line is not None:
            with contextlib.suppress(ValueError):
                line.remove(waiter)
            if not line:
                del self[key]

    async def wait(
        self,
        key: Key,
        waiter: Waiter,
        timeout: float,
        on_timeout: Callable[[Waiter], None],
        put_back: Callable[[list[Delivery]], None],
    ) -> list[Delivery]:
        """Wait for ``waiter``'s answer; ``on_timeout(waiter)`` runs after ``timeout`` seconds. If the caller is
        cancelled after messages were handed over, ``put_back`` gets them. The waiter leaves its line."""
        timer = asyncio.get_running_loop().call_later(timeout, on_timeout, waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            handed = handed_over(waiter.future)
            if handed:
                put_back(handed)
            raise
        finally:
            timer.cancel()
            self.leave(key, waiter)

    def wake_all(self) -> None:
        """Answer every waiter still waiting with ``[]`` (the store is closing)."""
        for line in self.values():
            for waiter in line:
                waiter.answer([])


def answer_empty(waiter: Waiter) -> None:
    """The usual ``on_timeout``: a long-poll that saw nothing answers ``[]``."""
    waiter.answer([])


class LeaseTimers:
    """At most one timer per queue, set at the earliest lease end a store knows of."""

    def __init__(self) -> None:
        self._timers: dict[Key, asyncio.TimerHandle] = {}

    def arm(self, key: Key, seconds_left: float, callback: Callable[[Key], None]) -> None:
        """Call ``callback(key)`` once ``seconds_left`` (plus a small slack) passed, unless an earlier timer is
        already set for ``key``."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, seconds_left) + LEASE_SLACK
        timer = self._timers.get(key)
        if timer is not None:
            if not timer.cancelled() and timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(when, callback, key)

    def fired(self, key: Key) -> None:
        """Forget the timer of ``key`` (its callback is running)."""
        self._timers.pop(key, None)

    def cancel_all(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
