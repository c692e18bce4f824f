"""The replay of a plan through one router: the streaming client, each workflow's agents as its DAG allows, and
the figures of a run (statistics, the fleet's counters, the workload's hit-rate ceiling)."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import orjson

from benchmarks.compare_routers._contenders import MODEL, Contender, RunSettings
from benchmarks.workload import Plan, Workflow, request_id


@dataclass
class RequestRecord:
    workflow_id: str
    agent: str
    ok: bool = False
    status: int | None = None
    error: str | None = None
    instance: str | None = None
    start_s: float = 0.0  # wall seconds since the run's start
    ttft_s: float | None = None
    e2e_s: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    prompt: str = ""  # not written to JSON: for the oracle hit rate
    output: str = ""

    def figures(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("prompt", "output")}


# --- statistics -------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


# --- the client -------------------------------------------------------------------------------------------
async def stream_completion(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str], deadline_s: float,
    record: RequestRecord, t0: float,
) -> str:
    """Send one streaming completion; fill ``record``; return the generated text ("" on failure)."""
    started = time.perf_counter()
    record.start_s = started - t0
    parts: list[str] = []
    usage: dict[str, Any] | None = None
    done = False
    try:
        async with asyncio.timeout(deadline_s):
            async with client.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as response:
                record.status = response.status_code
                record.instance = response.headers.get("x-sim-instance")
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    record.error = f"HTTP {response.status_code}: {text[:200]}"
                    return ""
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = orjson.loads(data)
                    if "error" in chunk:
                        record.error = f"stream error: {str(chunk['error'])[:200]}"
                        break
                    choices = chunk.get("choices") or []
                    if choices:
                        text = choices[0].get("text") or ""
                        if text:
                            if record.ttft_s is None:
                                record.ttft_s = time.perf_counter() - started
                            parts.append(text)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
    except TimeoutError:
        record.error = f"deadline of {deadline_s:g}s exceeded"
    except (httpx.HTTPError, orjson.JSONDecodeError, OSError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:200]
    record.e2e_s = time.perf_counter() - started
    if record.error is None and not done:
        record.error = "stream ended without [DONE]"
    if record.error is None and usage is None:
        record.error = "no usage chunk"
    if record.error is not None:
        return ""
    assert usage is not None
    record.ok = True
    record.prompt_tokens = int(usage.get("prompt_tokens", 0))
    record.completion_tokens = int(usage.get("completion_tokens", 0))
    record.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return "".join(parts)


def request_body(workflow: Workflow, agent: int, prompt: str, contender: Contender) -> dict[str, Any]:
    spec = workflow.agents[agent]
    body: dict[str, Any] = {
        "model": MODEL, "prompt": prompt, "max_tokens": spec.max_tokens, "temperature": 0.0,
        "stream": True, "stream_options": {"include_usage": True},
    }
    if contender.metadata:
        body["workflow_metadata"] = {"workflow_id": workflow.workflow_id, "agent_id": spec.metadata_agent_id,
                                     "context_sharing_strategy": "auto"}
        if spec.parent is not None:
            body["workflow_metadata"]["parent_request_id"] = request_id(workflow, spec.parent)
    return body


async def run_workflow(
    client: httpx.AsyncClient, url: str, workflow: Workflow, contender: Contender, settings: RunSettings,
    t0: float, records: list[RequestRecord],
) -> tuple[float, bool]:
    """Wait for the workflow's arrival, run its agents as the DAG allows; (completion seconds, all ok)."""
    arrival = t0 + workflow.arrival * settings.time_scale
    await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
    outputs: dict[int, str] = {}
    oks: dict[int, bool] = {}
    headers = {"x-session-id": workflow.workflow_id} if contender.kind == "vllm-router" else {}
    tasks: dict[int, asyncio.Task[None]] = {}

    async def agent_task(index: int) -> None:
        deps = workflow.agents[index].depends_on
        if deps:
            await asyncio.gather(*(tasks[d] for d in deps))
        if workflow.agents[index].delay_s:  # a tool call's duration, or a trace request's arrival offset
            await asyncio.sleep(workflow.agents[index].delay_s * settings.time_scale)
        prompt = workflow.prompt(index, outputs)
        record = RequestRecord(workflow.workflow_id, workflow.agents[index].name, prompt=prompt)
        records.append(record)
        outputs[index] = record.output = await stream_completion(
            client, url, request_body(workflow, index, prompt, contender), headers, settings.deadline_s, record,
            t0)
        oks[index] = record.ok

    for agent in workflow.agents:  # dependencies always have lower indices
        tasks[agent.index] = asyncio.create_task(agent_task(agent.index))
    await asyncio.gather(*tasks.values())
    return time.perf_counter() - arrival, all(oks.values())


async def replay(url: str, sim_urls: Sequence[str], plan: Plan, contender: Contender,
                 settings: RunSettings) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    timeout = httpx.Timeout(settings.deadline_s, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        for sim in sim_urls:  # fresh fleet already; this also drops anything a router's start-up sent
            (await client.post(f"{sim}/sim/reset")).raise_for_status()
        records: list[RequestRecord] = []
        before = [await _engine_ttft(client, sim) for sim in sim_urls]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(run_workflow(client, url, w, contender, settings, t0, records)
                                         for w in plan.workflows))
        duration = time.perf_counter() - t0
        stats = [(await client.get(f"{sim}/sim/stats")).json() for sim in sim_urls]
        after = [await _engine_ttft(client, sim) for sim in sim_urls]
    engine_ttft = (sum(a[0] - b[0] for a, b in zip(after, before, strict=True)),
                   sum(a[1] - b[1] for a, b in zip(after, before, strict=True)))
    return summarize(records, results, stats, duration, engine_ttft)


async def _engine_ttft(client: httpx.AsyncClient, sim: str) -> tuple[float, float]:
    """(sum, count) of the instance's vllm:time_to_first_token_seconds histogram (simulated seconds)."""
    text = (await client.get(f"{sim}/metrics")).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:time_to_first_token_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:time_to_first_token_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def oracle_hit_rate(records: Sequence[RequestRecord], block_size: int = 16) -> float:
    """The hit rate of one infinite prefix cache that has seen every earlier request's prompt and output
    (in start order): the ceiling no router can beat on this workload, whatever the fleet."""
    from benchmarks.simulator.tokenizer import encode

    seen: set[int] = set()
    hits = queries = 0
    for record in sorted((r for r in records if r.ok), key=lambda r: r.start_s):
        prompt = encode(record.prompt)
        tokens = prompt + encode(record.output)
        hashes: list[int] = []
        parent = 0
        for start in range(0, len(tokens) - block_size + 1, block_size):
            parent = hash((parent, *tokens[start:start + block_size]))
            hashes.append(parent)
        matched = 0
        for h in hashes[: len(prompt) // block_size]:
            if h not in seen:
                break
            matched += 1
        queries += len(prompt)
        hits += min(matched * block_size, max(len(prompt) - 1, 0))
        seen.update(hashes)
    return hits / queries if queries else math.nan


def summarize(records: Sequence[RequestRecord], workflows: Sequence[tuple[float, bool]],
              stats: Sequence[dict[str, Any]], duration: float,
              engine_ttft: tuple[float, float] = (math.nan, 0.0)) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    completion = [seconds for seconds, all_ok in workflows if all_ok]
    queries = sum(int(s["prefix_cache_queries"]) for s in stats)
    hits = sum(int(s["prefix_cache_hits"]) for s in stats)
    per_instance = [int(s["requests"]) for s in stats]
    mean_requests = _mean(per_instance)
    output_tokens = sum(r.completion_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    by_workflow: dict[str, set[str]] = {}
    for r in ok:
        if r.instance:
            by_workflow.setdefault(r.workflow_id, set()).add(r.instance)
    return {
        "hit_rate": hits / queries if queries else math.nan,
        "ttft_mean_ms": _mean(ttft) * 1e3,
        "ttft_p50_ms": percentile(ttft, 0.5) * 1e3,
        "ttft_p99_ms": percentile(ttft, 0.99) * 1e3,
        "e2e_mean_s": _mean(e2e),
        "e2e_p99_s": percentile(e2e, 0.99),
        "workflow_mean_s": _mean(completion),
        "workflow_p99_s": percentile(completion, 0.99),
        "requests_per_s": len(ok) / duration if duration else math.nan,
        "output_tokens_per_s": output_tokens / duration if duration else math.nan,
        "imbalance": max(per_instance) / mean_requests if mean_requests else math.nan,
        "failed": len(records) - len(ok),
        "engine_ttft_mean_ms": engine_ttft[0] / engine_ttft[1] * 1e3 if engine_ttft[1] else math.nan,
        # Supporting figures (JSON only).
        "requests": len(records),
        "workflows_completed": len(completion),
        "workflows_failed": len(workflows) - len(completion),
        "duration_s": duration,
        "prefix_cache_queries_tokens": queries,
        "prefix_cache_hits_tokens": hits,
        "client_prompt_tokens": prompt_tokens,
        "client_cached_tokens": sum(r.cached_tokens for r in ok),
        "client_output_tokens": output_tokens,
        "requests_per_instance": {s["instance"]: int(s["requests"]) for s in stats},
        "instances_per_workflow_mean": _mean([len(v) for v in by_workflow.values()]),
        "errors": sorted({r.error for r in records if r.error})[:20],
        "ttft_s": sorted(ttft),
        "instance_stats": list(stats),
        "oracle_hit_rate": oracle_hit_rate(records),
        "request_records": [r.figures() for r in records],
    }
