"""Shared fixtures: the real local stack (Envoy + ext_proc + A2A + simulated vLLM), all on port 0."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.stack import Stack, StackOptions

# Simulated GPU time runs 100x faster than real time: the cache and batching logic is unchanged.
TEST_TIME_SCALE = 0.01


def stack_options(**overrides: object) -> StackOptions:
    base: dict[str, object] = {
        "instances": 3, "listen_port": 0, "admin_port": 0, "time_scale": TEST_TIME_SCALE,
        "envoy_concurrency": 1, "log_level": "warning",
        "a2a_args": ("--max-message-queue-size", "20"),
    }
    base.update(overrides)
    return StackOptions(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """One stack shared by the read-mostly end-to-end tests (each uses its own workflow ids). Its observer reads
    every stream's body, so their tests can check the usage of streams exactly (by default only a sample is read
    and the others' usage is estimated: tests/e2e/test_observer_cost_e2e.py)."""
    with Stack(stack_options(extproc_args=("--observe-stream-bodies", "1"))) as running:
        yield running
