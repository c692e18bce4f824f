"""Faults on the single-replica stack (memory stores): ext_proc, a vLLM instance, the A2A service and Envoy
itself, each injected under the mixed load of benchmarks/chaos/. Broader versions of the single-fault e2e
tests (tests/e2e/test_placement_e2e.py, test_routing_e2e.py's fail-open test): mixed load, A2A traffic and
client-side counts. The scenarios share one stack and restore it (tests run in file order)."""

from __future__ import annotations

import pytest

from benchmarks.chaos import LLM_KINDS, ScenarioResult, run_named
from benchmarks.stack import Stack
from tests.resilience.support import (
    failed_calls,
    llm_attempt_failures,
    workflows_not_served_during_fault,
)

pytestmark = [pytest.mark.resilience, pytest.mark.e2e]


async def test_extproc_killed_requests_are_served_through_the_fallback(
        memory_stack: Stack, record: list[ScenarioResult]) -> None:
    result, load = await run_named("extproc-kill", memory_stack)
    record.append(result)
    # failure_mode_allow: Envoy serves every request while the only ext_proc is dead, without affinity.
    assert not failed_calls(load), failed_calls(load)
    assert result.fallback > 0, "no request went through the fallback route while ext_proc was dead"
    # After the restart routing comes back (5 normally routed calls in a row) and stays back.
    assert result.recovery_s is not None and result.window is not None
    recovered_at = result.window.fault_end + result.recovery_s
    late = [c for c in load.calls if c.kind in LLM_KINDS and c.fallback and c.started >= recovered_at]
    assert not late, f"{len(late)} requests bypassed ext_proc after routing had recovered"


async def test_killed_instance_costs_no_request(memory_stack: Stack, record: list[ScenarioResult]) -> None:
    result, load = await run_named("instance-kill", memory_stack)
    record.append(result)
    assert result.notes["victim_workflows"] > 0
    assert not llm_attempt_failures(load), llm_attempt_failures(load)  # Envoy's retry absorbs the dead instance
    assert not failed_calls(load)
    assert workflows_not_served_during_fault(result, load, exclude=result.notes["victim"]) == {}


async def test_hung_instance_does_not_block_other_workflows(memory_stack: Stack, record: list[ScenarioResult]) -> None:
    result, load = await run_named("instance-hang", memory_stack)
    record.append(result)
    victim = result.notes["victim"]
    assert result.notes["victim_workflows"] > 0
    # Workflows on the healthy instances keep being served while the victim hangs ...
    assert workflows_not_served_during_fault(result, load, exclude=victim) == {}
    # ... and requests sent to the hung instance are cut by the per-try idle timeout and retried on another
    # instance (the failover priority): slow, but none fails.
    assert result.notes["idle_timeouts"] > 0, "no request reached the hung instance"
    assert not llm_attempt_failures(load), llm_attempt_failures(load)
    assert not failed_calls(load)


async def test_frozen_instance_is_marked_down_and_its_workflows_move(
        memory_stack: Stack, record: list[ScenarioResult]) -> None:
    result, load = await run_named("instance-freeze", memory_stack)
    record.append(result)
    assert result.notes["victim_workflows"] > 0
    assert workflows_not_served_during_fault(result, load, exclude=result.notes["victim"]) == {}
    # /health times out too: the poller marks the instance down and the ext_proc moves its workflows
    # (failover); until then Envoy's per-try idle timeout retries their requests elsewhere.
    assert result.notes["failovers"] >= 1
    assert not llm_attempt_failures(load), llm_attempt_failures(load)
    assert not failed_calls(load)


async def test_slow_instance_keeps_serving(memory_stack: Stack, record: list[ScenarioResult]) -> None:
    result, load = await run_named("instance-slow", memory_stack)
    record.append(result)
    assert not failed_calls(load)
    assert workflows_not_served_during_fault(result, load, exclude=None) == {}  # its own workflows too


async def test_a2a_memory_store_loses_exactly_the_queued_messages(
        memory_stack: Stack, record: list[ScenarioResult]) -> None:
    result, load = await run_named("a2a-kill-memory", memory_stack)
    record.append(result)
    queued = result.notes["queued_at_kill"]
    assert queued > 0, "no backlog at the kill: the scenario measured nothing"
    # The loss is measured, not hidden: what the service held at the kill (its own status, and the clients'
    # sent-minus-received) is what never arrives; everything sent after the restart arrives.
    assert result.notes["queued_by_status"] == queued
    assert result.msgs_lost == queued
    assert not failed_calls(load), failed_calls(load)
    assert not failed_calls(load, LLM_KINDS)


async def test_envoy_cold_restart_fails_no_request_after_client_retries(
        memory_stack: Stack, record: list[ScenarioResult]) -> None:
    old_pid = memory_stack.envoy.popen.pid if memory_stack.envoy else 0
    result, load = await run_named("envoy-restart", memory_stack)
    record.append(result)
    assert result.notes["envoy_pid"] != old_pid
    # Attempts cut or refused during the restart are expected (counted in the table); none is final.
    assert not failed_calls(load), failed_calls(load)
    assert result.msgs_lost == 0


async def test_envoy_hot_restart_fails_no_request(memory_stack: Stack, record: list[ScenarioResult]) -> None:
    result, load = await run_named("envoy-hot-restart", memory_stack)
    record.append(result)
    assert result.notes["parent_exited"] and result.notes["epoch"] >= 1
    assert not failed_calls(load), failed_calls(load)
    assert result.msgs_lost == 0
