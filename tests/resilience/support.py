"""Assertion helpers shared by the resilience tests."""

from __future__ import annotations

from collections import Counter

from benchmarks.chaos import LLM_KINDS, MixedLoad, ScenarioResult, homes, served_during


def failed_calls(load: MixedLoad, kinds: tuple[str, ...] | None = None) -> Counter[str]:
    """Calls that failed after all their retries, by kind and last error."""
    return Counter(f"{c.kind}:{c.errors[-1] if c.errors else '?'}" for c in load.calls
                   if not c.ok and (kinds is None or c.kind in kinds))


def failed_attempts(load: MixedLoad, kinds: tuple[str, ...]) -> Counter[str]:
    return Counter(f"{c.kind}:{e}" for c in load.calls if c.kind in kinds for e in c.errors)


def llm_attempt_failures(load: MixedLoad) -> Counter[str]:
    return failed_attempts(load, LLM_KINDS)


def workflows_not_served_during_fault(result: ScenarioResult, load: MixedLoad, exclude: str | None) -> dict[str, str]:
    """Workflows (by home instance, the ``exclude``d one left out) without one call that started and ended
    successfully inside the fault window."""
    assert result.window is not None
    before = homes(load.calls, result.window.fault_start)
    assert len(before) == len(load.workflows), f"not every workflow was placed before the fault: {before}"
    return {wf: home for wf, home in before.items() if home != exclude
            and served_during(load.calls, wf, result.window.fault_start, result.window.fault_end) == 0}
