"""The asyncio shell around :class:`~.engine.Engine`: runs the step loop against the wall clock.

Simulated time and wall time: ``wall = sim * time_scale``. Each step sleeps ``duration * time_scale``
(1.0 = real time, 0.01 = 100x faster); with ``time_scale == 0`` steps do not sleep at all (they still yield
to the event loop) and simulated time advances only by step durations. While busy, simulated time advances
exactly by step durations, so Python overhead never shows up in simulated latencies; requests are stamped with
the wall clock's simulated time when they arrive (clamped into the step in flight), and an idle engine jumps to
the next arrival. All latencies the simulator reports are simulated seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from .engine import Engine, EngineRequest, SeqState, SeqStatus, StepResult
from .errors import EngineStoppedError

__all__ = ["AsyncEngine", "RequestHandle", "StepObserver"]

log = logging.getLogger(__name__)


class StepObserver(Protocol):
    def on_step(self, result: StepResult) -> None: ...


class RequestHandle:
    """A submitted request: await :meth:`result`, or iterate :meth:`stream` for text deltas as they come.

    Deltas are coalesced when the consumer is slower than the engine, as vLLM's output collector does.
    """

    __slots__ = ("_done", "_sent", "_visible", "_waiter", "state")

    def __init__(self, state: SeqState) -> None:
        self.state = state
        self._done: asyncio.Future[SeqState] = asyncio.get_running_loop().create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._sent = 0
        # Tokens the client may see: those of dispatched steps. The engine counts a step's tokens when it computes
        # the step, a step duration before the driver dispatches it; a stream read in between (a handler that
        # starts late on a busy loop) must not send them early (nor the chat role chunk that goes with the first).
        self._visible = 0

    @property
    def request_id(self) -> str:
        return self.state.request_id

    def _notify(self) -> None:
        self._visible = self.state.num_output
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _finish(self, exc: BaseException | None = None) -> None:
        if not self._done.done():
            if exc is None:
                self._done.set_result(self.state)
            else:
                self._done.set_exception(exc)
                self._done.exception()  # mark retrieved: a non-streaming caller may be gone
        self._notify()

    async def result(self) -> SeqState:
        """The final state once the request finished. Raises :class:`EngineStoppedError` on shutdown."""
        return await asyncio.shield(self._done)

    async def stream(self) -> AsyncIterator[tuple[str, bool]]:
        """Yield ``(text delta, is_last)`` (at least one token per delta) until the request finishes.
        Raises :class:`EngineStoppedError` if the engine stops or the request is aborted first."""
        loop = asyncio.get_running_loop()
        state = self.state
        while True:
            n = self._visible
            if n > self._sent:
                delta = "".join(state.output_pieces[self._sent : n])
                self._sent = n
                yield delta, state.status is SeqStatus.FINISHED and n == state.num_output
                continue
            if self._done.done():
                self._done.result()  # re-raises EngineStoppedError
                return
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class AsyncEngine:
    """Runs ``engine`` in a background task. Create and use it inside a running event loop."""

    def __init__(
        self,
        engine: Engine,
        *,
        time_scale: float = 1.0,
        observers: list[StepObserver] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        self.engine = engine
        self.time_scale = time_scale
        self.observers: list[StepObserver] = list(observers or [])
        self._clock = clock
        self._wall0 = clock()
        self._sim_now = 0.0
        self._step_end: float | None = None  # set while a step is in flight
        self._handles: dict[str, RequestHandle] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    # --- clock --------------------------------------------------------------------------------------------
    def _wall_sim(self) -> float:
        return (self._clock() - self._wall0) / self.time_scale if self.time_scale > 0 else self._sim_now

    def now(self) -> float:
        """Current simulated time: for an arrival during a step, clamped into that step."""
        wall = self._wall_sim()
        if self._step_end is not None:
            return min(max(wall, self._sim_now), self._step_end)
        return max(wall, self._sim_now)

    # --- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._stopped = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="vllm-sim-engine")

    async def stop(self) -> None:
        """Stop stepping; every unfinished request fails with :class:`EngineStoppedError`."""
        self._stopped = True
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for handle in list(self._handles.values()):
            self.engine.abort(handle.request_id)
            handle._finish(EngineStoppedError("the engine is shutting down"))
        self._handles.clear()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- requests -----------------------------------------------------------------------------------------
    def submit(self, request: EngineRequest) -> RequestHandle:
        """Add a request now. Raises :class:`BadRequestError` (invalid) or :class:`EngineStoppedError`."""
        if self._stopped:
            raise EngineStoppedError("the engine is shutting down")
        state = self.engine.add_request(request, self.now())
        handle = RequestHandle(state)
        self._handles[state.request_id] = handle
        self._wakeup.set()
        return handle

    def abort(self, request_id: str) -> None:
        """Forget a request whose client went away; its blocks are freed."""
        handle = self._handles.pop(request_id, None)
        if handle is not None and self.engine.abort(request_id, self.now()):
            handle._finish(EngineStoppedError("request aborted"))

    # --- the loop -----------------------------------------------------------------------------------------
    async def _run(self) -> None:
        engine = self.engine
        while not self._stopped:
            now = self._sim_now
            try:
                result = engine.step(now)
            except Exception:  # a bug must not leave every client hanging
                log.exception("engine step failed; failing in-flight requests")
                for handle in list(self._handles.values()):
                    engine.abort(handle.request_id)
                    handle._finish(EngineStoppedError("engine step failed"))
                self._handles.clear()
                await asyncio.sleep(0)
                continue
            if result.idle:
                await self._idle(engine.next_ready_time())
                continue
            end = result.end
            self._step_end = end
            if self.time_scale > 0:
                delay = self._wall0 + end * self.time_scale - self._clock()
                await asyncio.sleep(delay if delay > 0 else 0)
            else:
                await asyncio.sleep(0)
            self._sim_now = end
            self._step_end = None
            self._dispatch(result)

    async def _idle(self, ready: float | None) -> None:
        """Wait for a new request or for the next pending one to reach the scheduler.

        Simulated time jumps to that moment exactly; it never snaps to the wall clock, so event-loop and timer
        latency (about 1 ms, i.e. 100 simulated ms at time_scale 0.01) never inflate simulated latencies.
        Requests are stamped with wall-derived arrival times by :meth:`now` instead.
        """
        self._wakeup.clear()
        if ready is None:
            await self._wakeup.wait()
            return
        if self.time_scale > 0:
            timeout = self._wall0 + ready * self.time_scale - self._clock()
            if timeout > 0:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                    return  # a new request came first: re-plan with it
                except TimeoutError:
                    pass
        else:
            await asyncio.sleep(0)
            earliest = self.engine.next_ready_time()  # a request may have arrived during the yield
            ready = ready if earliest is None else earliest
        self._sim_now = max(self._sim_now, ready)

    def _dispatch(self, result: StepResult) -> None:
        handles = self._handles
        for seq in result.emitted:
            handle = handles.get(seq.request_id)
            if handle is not None:
                handle._notify()
        for seq in result.finished:
            handle = handles.pop(seq.request_id, None)
            if handle is not None:
                handle._finish()
        for observer in self.observers:
            try:
                observer.on_step(result)
            except Exception:
                log.exception("step observer failed")
