"""What ``make run`` does when one of the stack's children dies: report it, keep serving, maybe restart it.

The launcher calls ``Supervisor.poll()`` from its main thread while it serves. A simulated vLLM instance that
dies is reported in one ``STACK_CHILD_EXITED`` line and the stack keeps serving without it (the router marks it
down, Envoy retries on the others); with a ``RestartPolicy`` it is started again on its port after a backoff, so
Envoy's cluster for it finds it again. Envoy, ext_proc, the A2A service and Redis are vital: the stack cannot
serve without them, and ``poll`` hands the caller the name of the one that died.

Nothing here runs unless a caller creates a ``Supervisor``: a test that kills an instance through ``Stack`` on
purpose still sees it dead.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

DEFAULT_RESTART_BACKOFF_S = 0.5
DEFAULT_RESTART_MAX_BACKOFF_S = 10.0
# An instance that stayed up this long since its last restart starts again from the first backoff.
DEFAULT_RESTART_RESET_S = 30.0


class SupervisedPopen(Protocol):
    pid: int
    returncode: int | None


class SupervisedProcess(Protocol):
    name: str
    popen: SupervisedPopen
    ports: dict[str, int]
    log_path: Path

    def alive(self) -> bool: ...


class SupervisedStack(Protocol):
    """The part of ``benchmarks.stack.Stack`` the supervisor uses."""

    envoy: SupervisedProcess | None
    extprocs: Sequence[SupervisedProcess]
    a2as: Sequence[SupervisedProcess]
    redis: SupervisedProcess | None
    simulators: Mapping[str, SupervisedProcess]

    def start_simulator(self, name: str, port: int = 0) -> SupervisedProcess: ...


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    backoff_s: float = DEFAULT_RESTART_BACKOFF_S
    max_backoff_s: float = DEFAULT_RESTART_MAX_BACKOFF_S
    reset_after_s: float = DEFAULT_RESTART_RESET_S

    def delay(self, attempt: int) -> float:
        """Seconds before restart ``attempt`` (1, 2, …) of an instance: doubling from ``backoff_s``, capped."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)


def exit_fields(returncode: int | None) -> dict[str, object]:
    """``{"exit_code": 1}``, or ``{"signal": "SIGKILL"}`` for a death by signal (``Popen``'s negative code)."""
    if returncode is not None and returncode < 0:
        try:
            return {"signal": signal.Signals(-returncode).name}
        except ValueError:
            return {"signal": -returncode}
    return {"exit_code": returncode}


def event_line(event: str, **fields: object) -> str:
    """``STACK_<EVENT> key=value …``: one line a person reads and a test or log shipper greps. A value with a
    space, quote or ``=`` is quoted."""
    parts = [f"STACK_{event}"]
    for key, value in fields.items():
        text = str(value)
        quote = not text or any(c.isspace() or c in "\"'=" for c in text)
        parts.append(f"{key}={text!r}" if quote else f"{key}={text}")
    return " ".join(parts)


@dataclass(slots=True)
class _Restart:
    attempt: int
    due: float
    port: int


class Supervisor:
    """Polled by the launcher: reports deaths, restarts instances when given a policy, names a dead vital child."""

    def __init__(self, stack: SupervisedStack, restart: RestartPolicy | None = None, *,
                 log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic) -> None:
        self._stack = stack
        self._restart = restart
        self._log = log
        self._clock = clock
        self._reported: set[int] = set()  # pids already reported dead
        self._pending: dict[str, _Restart] = {}
        self._attempts: dict[str, int] = {}  # the last restart attempt that succeeded, per instance
        self._up_since: dict[str, float] = {}

    def poll(self) -> str | None:
        """Report children that died since the last poll and run the restarts that are due. Returns the name of
        a vital child that died (the caller stops the stack), else None."""
        stack = self._stack
        for process in [stack.envoy, *stack.extprocs, *stack.a2as, stack.redis]:
            if process is not None and not process.alive():
                self._report(process, then="stop")
                return process.name
        for name, process in list(stack.simulators.items()):
            if not process.alive() and process.popen.pid not in self._reported and name not in self._pending:
                self._instance_died(name, process)
        now = self._clock()
        for name, restart in list(self._pending.items()):
            if restart.due <= now:
                self._try_restart(name, restart)
        return None

    def _report(self, process: SupervisedProcess, then: str, **extra: object) -> None:
        self._reported.add(process.popen.pid)
        self._log(event_line("CHILD_EXITED", name=process.name, pid=process.popen.pid,
                             **exit_fields(process.popen.returncode), then=then, **extra, log=process.log_path))

    def _instance_died(self, name: str, process: SupervisedProcess) -> None:
        if self._restart is None:
            self._report(process, then="failover")
            return
        now = self._clock()
        previous = self._attempts.get(name, 0)
        if now - self._up_since.get(name, now) >= self._restart.reset_after_s:
            previous = 0
        attempt = previous + 1
        delay = self._restart.delay(attempt)
        self._report(process, then="restart", restart_in_s=delay)
        self._pending[name] = _Restart(attempt, now + delay, process.ports["http"])

    def _try_restart(self, name: str, restart: _Restart) -> None:
        assert self._restart is not None
        try:
            process = self._stack.start_simulator(name, restart.port)
        except (RuntimeError, TimeoutError, OSError) as exc:
            delay = self._restart.delay(restart.attempt + 1)
            self._log(event_line("CHILD_RESTART_FAILED", name=name, attempt=restart.attempt,
                                 error=str(exc).splitlines()[0], restart_in_s=delay))
            self._pending[name] = _Restart(restart.attempt + 1, self._clock() + delay, restart.port)
            return
        del self._pending[name]
        self._attempts[name] = restart.attempt
        self._up_since[name] = self._clock()
        self._log(event_line("CHILD_RESTARTED", name=name, pid=process.popen.pid, port=process.ports["http"],
                             attempt=restart.attempt))
