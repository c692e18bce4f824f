"""The launcher's supervisor on a fake stack: what it reports, when it restarts, what it calls fatal."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from benchmarks._stack_supervisor import RestartPolicy, Supervisor, event_line, exit_fields


@dataclass
class FakePopen:
    pid: int
    returncode: int | None = None


@dataclass
class FakeProcess:
    name: str
    popen: FakePopen
    ports: dict[str, int] = field(default_factory=dict)
    log_path: Path = Path("run/x.log")

    def alive(self) -> bool:
        return self.popen.returncode is None


class FakeStack:
    def __init__(self, instances: int = 2) -> None:
        self.pids = iter(range(100, 10_000))
        self.envoy: FakeProcess | None = self.process("envoy")
        self.extprocs = [self.process("extproc-1")]
        self.a2as = [self.process("a2a-1")]
        self.redis: FakeProcess | None = None
        self.simulators = {f"vllm-{i}": self.process(f"vllm-{i}", 8100 + i) for i in range(1, instances + 1)}
        self.fail_starts = 0  # how many of the next start_simulator calls fail
        self.starts: list[tuple[str, int]] = []

    def process(self, name: str, port: int = 0) -> FakeProcess:
        return FakeProcess(name, FakePopen(next(self.pids)), {"http": port}, Path(f"run/{name}.log"))

    def start_simulator(self, name: str, port: int = 0) -> FakeProcess:
        self.starts.append((name, port))
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError(f"{name} exited (1):\nOSError: address already in use")
        self.simulators[name] = self.process(name, port)
        return self.simulators[name]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def supervised(restart: RestartPolicy | None) -> tuple[FakeStack, Supervisor, list[str], Clock]:
    stack, lines, clock = FakeStack(), [], Clock()
    return stack, Supervisor(stack, restart, log=lines.append, clock=clock), lines, clock


@pytest.mark.parametrize(
    ("attempt", "delay"), [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0), (40, 10.0)],
)
def test_the_backoff_doubles_up_to_its_cap(attempt: int, delay: float) -> None:
    assert RestartPolicy(backoff_s=0.5, max_backoff_s=10.0).delay(attempt) == delay


@pytest.mark.parametrize(
    ("returncode", "fields"),
    [(-9, {"signal": "SIGKILL"}), (-15, {"signal": "SIGTERM"}), (1, {"exit_code": 1}), (0, {"exit_code": 0})],
)
def test_exit_fields_name_the_signal_or_the_code(returncode: int, fields: dict[str, object]) -> None:
    assert exit_fields(returncode) == fields


def test_event_lines_are_key_value_and_quote_what_needs_it() -> None:
    assert event_line("CHILD_EXITED", name="vllm-2", pid=7, signal="SIGKILL") == \
        "STACK_CHILD_EXITED name=vllm-2 pid=7 signal=SIGKILL"
    assert event_line("X", error="address in use", empty="") == "STACK_X error='address in use' empty=''"


def test_without_restarts_a_dead_instance_is_reported_once_and_the_stack_keeps_serving() -> None:
    stack, supervisor, lines, clock = supervised(None)
    assert supervisor.poll() is None and lines == []
    stack.simulators["vllm-2"].popen.returncode = -9
    for _ in range(3):
        assert supervisor.poll() is None
        clock.now += 60
    assert lines == ["STACK_CHILD_EXITED name=vllm-2 pid=104 signal=SIGKILL then=failover log=run/vllm-2.log"]
    assert stack.starts == []


def test_with_restarts_a_dead_instance_comes_back_on_its_port_after_the_backoff() -> None:
    stack, supervisor, lines, clock = supervised(RestartPolicy(backoff_s=0.5))
    stack.simulators["vllm-1"].popen.returncode = 1
    assert supervisor.poll() is None
    assert lines == ["STACK_CHILD_EXITED name=vllm-1 pid=103 exit_code=1 then=restart restart_in_s=0.5 "
                     "log=run/vllm-1.log"]
    clock.now += 0.4
    supervisor.poll()
    assert stack.starts == []  # not before the backoff
    clock.now += 0.1
    supervisor.poll()
    assert stack.starts == [("vllm-1", 8101)]
    new = stack.simulators["vllm-1"]
    assert new.alive() and lines[-1] == f"STACK_CHILD_RESTARTED name=vllm-1 pid={new.popen.pid} port=8101 attempt=1"


def test_a_failed_restart_is_logged_and_retried_with_a_longer_backoff() -> None:
    stack, supervisor, lines, clock = supervised(RestartPolicy(backoff_s=0.5))
    stack.fail_starts = 2
    stack.simulators["vllm-2"].popen.returncode = -9
    supervisor.poll()
    for delay in (0.5, 1.0, 2.0):
        clock.now += delay
        supervisor.poll()
    assert lines[1:] == [
        "STACK_CHILD_RESTART_FAILED name=vllm-2 attempt=1 error='vllm-2 exited (1):' restart_in_s=1.0",
        "STACK_CHILD_RESTART_FAILED name=vllm-2 attempt=2 error='vllm-2 exited (1):' restart_in_s=2.0",
        f"STACK_CHILD_RESTARTED name=vllm-2 pid={stack.simulators['vllm-2'].popen.pid} port=8102 attempt=3",
    ]


def test_an_instance_that_keeps_dying_backs_off_more_and_one_that_stayed_up_starts_over() -> None:
    stack, supervisor, lines, clock = supervised(RestartPolicy(backoff_s=0.5, reset_after_s=30))
    for expected in ("restart_in_s=0.5", "restart_in_s=1.0", "restart_in_s=2.0"):
        stack.simulators["vllm-1"].popen.returncode = -9
        supervisor.poll()
        assert expected in lines[-1]
        clock.now += 5
        supervisor.poll()  # restarted; it dies again 5 s later
    clock.now += 30
    stack.simulators["vllm-1"].popen.returncode = -9
    supervisor.poll()
    assert "restart_in_s=0.5" in lines[-1]


@pytest.mark.parametrize("vital", ["envoy", "extproc-1", "a2a-1", "redis"])
def test_a_dead_vital_child_is_reported_and_named_to_the_caller(vital: str) -> None:
    stack, supervisor, lines, _ = supervised(RestartPolicy())
    stack.redis = stack.process("redis")
    process = {"envoy": stack.envoy, "extproc-1": stack.extprocs[0], "a2a-1": stack.a2as[0],
               "redis": stack.redis}[vital]
    assert process is not None
    process.popen.returncode = -9
    assert supervisor.poll() == vital
    assert lines == [f"STACK_CHILD_EXITED name={vital} pid={process.popen.pid} signal=SIGKILL then=stop "
                     f"log=run/{vital}.log"]
    assert stack.starts == []  # vital children are not restarted
