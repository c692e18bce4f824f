"""Shared stacks for the resilience suite, its marker, and the per-scenario table printed at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.chaos import ScenarioResult, format_table, stack_options
from benchmarks.stack import Stack

RESULTS: list[ScenarioResult] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "resilience: fault injection under load through the real stack "
                            "(benchmarks/chaos/)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RESULTS:
        terminalreporter.write_sep("=", "resilience scenarios (benchmarks/chaos/)")
        terminalreporter.write_line(format_table(RESULTS))


@pytest.fixture
def record() -> Iterator[list[ScenarioResult]]:
    """Append a scenario's result here: it is printed in the session summary even if the test then fails."""
    yield RESULTS


@pytest.fixture(scope="module")
def memory_stack() -> Iterator[Stack]:
    """3 simulated instances, 1 ext_proc, 1 A2A service (memory stores); restored by each scenario."""
    with Stack(stack_options("memory")) as stack:
        yield stack


@pytest.fixture(scope="module")
def redis_stack() -> Iterator[Stack]:
    """3 instances, 2 ext_proc + 2 A2A replicas on a private Redis with an append-only file."""
    with Stack(stack_options("redis")) as stack:
        yield stack
