"""Faults on the replicated stack (2 ext_proc + 2 A2A replicas on a private Redis with an append-only file).
Broader versions of tests/e2e/test_replicas_e2e.py's replica kill and Redis outage and of
tests/redis/test_redis_outage.py (in-process A2A): here under the mixed load through Envoy, with message
accounting."""

from __future__ import annotations

import pytest

from benchmarks.chaos import A2A_KINDS, LLM_KINDS, ScenarioResult, run_named
from benchmarks.stack import Stack
from tests.resilience.support import failed_attempts, failed_calls, llm_attempt_failures

pytestmark = [pytest.mark.resilience, pytest.mark.e2e]


async def test_killed_extproc_replica_fails_no_request(redis_stack: Stack, record: list[ScenarioResult]) -> None:
    result, load = await run_named("extproc-kill-replica", redis_stack)
    record.append(result)
    assert not llm_attempt_failures(load), llm_attempt_failures(load)
    assert not failed_calls(load)


async def test_a2a_redis_store_loses_nothing_when_every_replica_dies(
        redis_stack: Stack, record: list[ScenarioResult]) -> None:
    result, load = await run_named("a2a-kill-redis", redis_stack)
    record.append(result)
    assert failed_attempts(load, A2A_KINDS), "the A2A outage was not seen by any client"
    assert result.msgs_lost == 0, sorted(load.messages.lost())[:10]
    assert result.msgs_sent > 0 and result.msgs_delivered == result.msgs_sent
    # Duplicates only within the at-least-once contract: a message comes again only if its ack failed or
    # came after its lease expired.
    assert load.messages.contract_violations() == set()
    assert not failed_calls(load)


async def test_redis_outage_degrades_llm_routing_and_a2a_answers_store_unavailable(
        redis_stack: Stack, record: list[ScenarioResult]) -> None:
    result, load = await run_named("redis-restart", redis_stack)
    record.append(result)
    assert not llm_attempt_failures(load), llm_attempt_failures(load)  # degraded mode: local decisions
    assert not failed_calls(load, LLM_KINDS)
    a2a_errors = failed_attempts(load, A2A_KINDS)
    assert a2a_errors, "no A2A call saw the outage"
    assert {kind.split(":", 1)[1] for kind in a2a_errors} == {"503:store_unavailable"}, a2a_errors
    assert not failed_calls(load), failed_calls(load)  # the clients' retries outlast the outage
    assert result.msgs_lost == 0, sorted(load.messages.lost())[:10]
    assert load.messages.contract_violations() == set()
