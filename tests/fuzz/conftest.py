"""The fuzz suite (``-m fuzz``): one real stack (Envoy, ext_proc, A2A, one simulated vLLM) for all targets.

At the end of a run a table lists the inputs tried and the crashes per target. The rows of the pure targets
(metadata parser, queue logic, prefix index) are filled from Hypothesis' statistics when their property tests
(tests/unit/test_metadata.py, test_a2a_properties.py, test_prefix_index.py) run in the same session."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from benchmarks.stack import Stack
from tests.conftest import stack_options
from tests.fuzz.support import BASELINE, TALLY, TARGETS

_PURE_TARGETS = {"test_metadata.py": "metadata parser", "test_a2a_properties.py": "queue logic",
                 "test_prefix_index.py": "prefix index"}
_HYPOTHESIS_COUNTS = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: fuzzing of every input through the real servers (tests/fuzz)")


@pytest.fixture(autouse=True)
def _crash_baseline() -> None:
    BASELINE.update({name: tally.crashes for name, tally in TALLY.items()})


@pytest.fixture(scope="session")
def fuzz_stack() -> Iterator[Stack]:
    options = stack_options(
        instances=1,
        # Short long-polls: generated receive timeouts must not hold the suite for the default 30 s cap.
        a2a_args=("--max-message-queue-size", "20", "--receive-timeout-cap", "0.2", "--max-message-size", "65536"),
    )
    with Stack(options) as running:
        yield running


def _pure_counts(terminalreporter: pytest.TerminalReporter) -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            stats = getattr(report, "__dict__", {}).get("_hypothesis_stats")
            if getattr(report, "when", None) != "teardown" or not stats:
                continue
            target = _PURE_TARGETS.get(report.nodeid.split("::")[0].rpartition("/")[2])
            if target is None:
                continue
            row = counts.setdefault(target, [0, 0])
            for passing, failing, _invalid in _HYPOTHESIS_COUNTS.findall(stats):
                row[0] += int(passing) + int(failing)  # "invalid" cases were filtered out, never run
                row[1] += int(failing)
    return {k: (v[0], v[1]) for k, v in counts.items()}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    pure = _pure_counts(terminalreporter)
    if not pure and not any(t.inputs for t in TALLY.values()):
        return
    terminalreporter.section("fuzz summary")
    terminalreporter.write_line(f"{'target':<22} {'inputs':>8} {'crashes':>8}")
    for name in TARGETS:
        if name in pure:
            inputs, crashes = pure[name]
        else:
            inputs, crashes = TALLY[name].inputs, TALLY[name].crashes
        shown = f"{inputs:>8}" if inputs else f"{'not run':>8}"
        terminalreporter.write_line(f"{name:<22} {shown} {crashes:>8}")
