"""Program-level scheduling: vLLM's per-request ``priority`` from the workflow's least attained service.

A workflow's attained service is the work its requests have cost the fleet, input + 2 x output tokens (llm-d's
program-aware scorer; Autellix's least-attained-service), decayed with a half-life so that a workflow that
paused is not punished forever. Requests of workflows that have had little service run first, so short
workflows are not stuck behind long ones at saturation; ``workflow_priority`` divides the level (a priority-2
workflow waits half as long). vLLM runs lower values first (``--scheduling-policy priority``; under the default
``fcfs`` it refuses any non-zero priority, so this is opt-in: ``--priority-scheduling``).

    level = log2(1 + attained / 1024 tokens) / workflow_priority, truncated, at most MAX_PRIORITY

Pure: the director feeds completions in and reads priorities out.
"""

from __future__ import annotations

import math

SERVICE_UNIT_TOKENS = 1024.0
OUTPUT_WEIGHT = 2.0  # an output token costs a decode step; a prompt token a share of a prefill
DEFAULT_HALF_LIFE_S = 60.0
MAX_PRIORITY = 64


def decayed(attained: float, since: float, now: float, half_life: float) -> float:
    if attained <= 0.0 or now <= since:
        return attained
    return attained * math.pow(0.5, (now - since) / half_life)


def service(prompt_tokens: int, completion_tokens: int) -> float:
    return prompt_tokens + OUTPUT_WEIGHT * completion_tokens


def vllm_priority(attained: float, workflow_priority: float) -> int:
    level = math.log2(1.0 + max(0.0, attained) / SERVICE_UNIT_TOKENS) / max(workflow_priority, 0.1)
    return min(MAX_PRIORITY, int(level))
