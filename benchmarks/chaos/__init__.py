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

Modules: ``_accounting`` (the recorded values and the pure accounting), ``_load`` (``MixedLoad``),
``_scenarios`` (the faults, ``run_scenario``, the shared stacks), ``_cli``.
"""

from benchmarks.chaos._accounting import (
    A2A_KINDS,
    COLUMNS,
    LLM_KINDS,
    RECOVERY_RUN,
    Call,
    Messages,
    ScenarioResult,
    Window,
    format_row,
    format_table,
    rate,
    recovery_time,
    summarize,
)
from benchmarks.chaos._cli import build_parser, main
from benchmarks.chaos._load import CONTEXT, RETRYABLE_STATUS, MixedLoad, RetryPolicy
from benchmarks.chaos._scenarios import (
    CHAOS_PER_TRY_IDLE_TIMEOUT_S,
    DEFAULT_FAULT_S,
    DEFAULT_TIME_SCALE,
    SCENARIOS,
    Fault,
    Run,
    Scenario,
    envoy_stats,
    homes,
    run_named,
    run_scenario,
    served_during,
    stack_options,
)

__all__ = [
    "A2A_KINDS",
    "CHAOS_PER_TRY_IDLE_TIMEOUT_S",
    "COLUMNS",
    "CONTEXT",
    "DEFAULT_FAULT_S",
    "DEFAULT_TIME_SCALE",
    "LLM_KINDS",
    "RECOVERY_RUN",
    "RETRYABLE_STATUS",
    "SCENARIOS",
    "Call",
    "Fault",
    "Messages",
    "MixedLoad",
    "RetryPolicy",
    "Run",
    "Scenario",
    "ScenarioResult",
    "Window",
    "build_parser",
    "envoy_stats",
    "format_row",
    "format_table",
    "homes",
    "main",
    "rate",
    "recovery_time",
    "run_named",
    "run_scenario",
    "served_during",
    "stack_options",
    "summarize",
]
