"""The issue #17 examples against a real local stack (4 instances, no A2A): the OpenAI Agents SDK with a handoff,
over the Responses API (stored responses chained by previous_response_id) and over Chat Completions (a
prompt_cache_key); and a plain OpenAI SDK client that sets only prompt_cache_key. Each example checks itself
(one instance per conversation, cached tokens after the first call) and exits non-zero on failure; the test
checks the same from the calls it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.stack import Stack
from examples._common import RESULT_PREFIX
from tests.conftest import stack_options

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Stack]:
    with Stack(stack_options(instances=4, time_scale=0.02, with_a2a=False)) as running:
        yield running


def run_example(name: str, stack: Stack) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", f"examples.{name}", "--base-url", stack.url], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
                          check=False)
    output = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0 and "OK" in done.stdout.splitlines(), output
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    result = json.loads(line.removeprefix(RESULT_PREFIX))
    assert result["problems"] == [], output
    return list(result["calls"])


def test_openai_agents_handoff_over_responses_and_chat(fleet: Stack) -> None:
    calls = run_example("openai_agents", fleet)
    for api in ("responses", "chat"):
        mine = [c for c in calls if c["api"] == api]
        assert len(mine) >= 3 and all(c["status"] == 200 for c in mine)
        if api == "responses":  # a chained response is answered where it is stored; a chat may move to an
            assert len({c["served_by"] for c in mine}) == 1, mine  # instance holding as much of its prompt
        assert all(c["cached_tokens"] > 0 for c in mine[1:]), mine
    responses = [c for c in calls if c["api"] == "responses"]
    assert responses[0]["tools"] == 1  # the triage agent offers the handoff tool
    assert all(c["previous_response_id"] for c in responses[1:])
    chat = [c for c in calls if c["api"] == "chat"]
    assert len({c["prompt_cache_key"] for c in chat}) == 1 and chat[0]["prompt_cache_key"]


def test_a_client_that_sets_only_prompt_cache_key(fleet: Stack) -> None:
    calls = run_example("prompt_cache_key", fleet)
    for key in {c["key"] for c in calls}:
        mine = [c for c in calls if c["key"] == key]
        assert len({c["served_by"] for c in mine}) == 1
        assert all(c["cached_tokens"] > 0 for c in mine[1:])
