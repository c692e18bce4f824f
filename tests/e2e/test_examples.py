"""The client examples (OpenAI SDK, LangChain, AutoGen) run as users run them, against a real local stack.

Each example runs as ``python -m examples.<name> --base-url <gateway>`` in a subprocess (AutoGen in
its own virtualenv: it pins protobuf 5). The example checks itself and exits non-zero on failure; the test then
checks the same things on its own, from the calls the example reports (its x-served-by headers and cached
tokens) and from the workflow status it reads itself through the gateway.

tiktoken's BPE files cannot be downloaded here; every example runs with an empty ``TIKTOKEN_CACHE_DIR``, so a
code path that needs tiktoken fails the test instead of passing thanks to a cached file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from a2a_service.client import A2AClient
from benchmarks.stack import Stack
from examples._common import RESULT_PREFIX, wait_for_status
from tests.conftest import stack_options

REPO = Path(__file__).resolve().parents[2]
AUTOGEN_PYTHON = os.path.abspath(os.environ.get("AUTOGEN_PYTHON", str(REPO / ".autogen-venv" / "bin" / "python")))


@pytest.fixture(scope="module")
def examples_stack() -> Iterator[Stack]:
    # The checks compare the workflow status's token counts with the usage each client saw: exact only where the
    # observer reads every stream (by default it reads 1 in 100 and estimates the others: stream_observation.py).
    with Stack(stack_options(time_scale=0.02, extproc_args=("--observe-stream-bodies", "1"))) as running:
        yield running


def run_example(python: str, name: str, stack: Stack, tmp_path: Path) -> list[dict[str, Any]]:
    """Run one example; returns the calls it reports (it must have exited 0)."""
    tiktoken_cache = tmp_path / "tiktoken-cache"
    tiktoken_cache.mkdir()
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tiktoken_cache), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [python, "-m", f"examples.{name}", "--base-url", stack.url],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=90, check=False,
    )
    output = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, output
    assert "OK" in done.stdout.splitlines(), output
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    result = json.loads(line.removeprefix(RESULT_PREFIX))
    assert result["problems"] == []
    return result["calls"]


async def assert_pinned_and_cached(stack: Stack, calls: list[dict[str, Any]], agents: set[str]) -> None:
    """Per workflow: one instance served every call, the status agrees, and the prefix cache was reused."""
    workflows = {c["workflow_id"] for c in calls}
    async with A2AClient(stack.url) as a2a:
        for workflow_id in workflows:
            mine = [c for c in calls if c["workflow_id"] == workflow_id]
            served = {c["served_by"] for c in mine}
            assert len(served) == 1 and served <= set(stack.backends), (workflow_id, mine)
            status = await wait_for_status(a2a, workflow_id, completed=len(mine), timeout=10.0)
            # the router reports the instance's base URL (the seed's assigned_instance): the one that served
            (name,) = served
            assert status.assigned_instance == f"http://127.0.0.1:{stack.backends[name]}"
            assert status.total_requests == status.completed_requests == len(mine)
            assert status.affinity_hits == len(mine) - 1
            assert set(status.agents) == {c["agent"] for c in mine} == agents
            assert status.cache_hits > 0 and status.cache_hit_rate > 0
            assert status.cached_tokens == sum(c["cached_tokens"] for c in mine)
            assert status.messages.sent >= 1 and status.messages.delivered >= 1  # the A2A hand-over


async def test_openai_sdk_example(examples_stack: Stack, tmp_path: Path) -> None:
    calls = run_example(sys.executable, "openai_sdk", examples_stack, tmp_path)
    # Both APIs x metadata in the body and in headers, each streaming and not.
    kinds = {(c["api"], c["workflow_id"].split("-")[2], c["stream"]) for c in calls}
    assert kinds == {(api, where, stream) for api in ("completions", "chat") for where in ("body", "headers")
                     for stream in (False, True)}
    await assert_pinned_and_cached(examples_stack, calls, {"collector", "analyst", "writer"})
    for workflow_id in {c["workflow_id"] for c in calls}:
        cached = [c["cached_tokens"] for c in calls if c["workflow_id"] == workflow_id]
        assert all(later > cached[0] for later in cached[1:]), cached


async def test_langchain_example(examples_stack: Stack, tmp_path: Path) -> None:
    calls = run_example(sys.executable, "langchain_agents", examples_stack, tmp_path)
    assert [c["agent"] for c in calls] == ["researcher", "analyst", "writer"]
    assert [c["stream"] for c in calls] == [False, False, True]
    await assert_pinned_and_cached(examples_stack, calls, {"researcher", "analyst", "writer"})
    # The shared context is reused by the agents after the first.
    assert all(c["cached_tokens"] > 0 for c in calls[1:])


# `make test` builds the AutoGen venv and CI sets EXAMPLES_REQUIRE_AUTOGEN=1, so there a missing venv fails.
@pytest.mark.skipif(
    not os.access(AUTOGEN_PYTHON, os.X_OK) and os.environ.get("EXAMPLES_REQUIRE_AUTOGEN") != "1",
    reason=f"no Python with AutoGen at {AUTOGEN_PYTHON}: `make autogen-venv` builds it (or set AUTOGEN_PYTHON)",
)
async def test_autogen_example(examples_stack: Stack, tmp_path: Path) -> None:
    calls = run_example(AUTOGEN_PYTHON, "autogen_agents", examples_stack, tmp_path)
    assert [c["agent"] for c in calls] == ["researcher", "analyst", "writer"] * 2  # two round-robin rounds
    await assert_pinned_and_cached(examples_stack, calls, {"researcher", "analyst", "writer"})
    assert all(c["cached_tokens"] > 0 for c in calls[1:])
