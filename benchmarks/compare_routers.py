"""Router comparison: the same seeded multi-agent workload through each router, each on a fresh simulated fleet.

For every contender this starts a FRESH fleet of simulated vLLM instances (``--instances``, default 4) with a
small KV cache (``--num-gpu-blocks``: the plan's distinct prompt and output tokens do not fit in the fleet, so
eviction matters), puts the contender's router in front of it, replays the plan of ``benchmarks/workload.py``
(workflows arrive over time; each agent runs when the agents it depends on have finished, and their actual
generated text goes into its prompt), and prints one table. Contenders:

* ``round-robin``, ``least-loaded``: Envoy alone, ROUND_ROBIN / LEAST_REQUEST over one cluster of the fleet.
* ``prefix-aware``: our Envoy + ext_proc, requests WITHOUT ``workflow_metadata`` (our prompt-prefix fallback).
* ``workflow-aware``: our Envoy + ext_proc, requests WITH ``workflow_metadata`` (workflow affinity).
* ``vllm-router/round_robin``, ``vllm-router/consistent_hash``, ``vllm-router/cache_aware``: the peer router
  from PyPI (``pip install vllm-router==0.1.17``), pointed at the fleet. Every request to it carries the
  workflow id in an ``X-Session-ID`` header, the first key its ``consistent_hash`` policy hashes (before
  X-User-ID, the body's ``user`` ... and finally a hash of the whole body), so consistent hashing keeps each
  workflow on one worker: its best chance. ``cache_aware`` matches prefixes on token ids it asks the worker
  for (vLLM's ``/tokenize``): every fleet is started by ``benchmarks/peers.py``, the simulator plus that
  endpoint, so it gets them (its decision counts are reported). If ``vllm-router`` is not installed its rows
  are skipped, and the output says so.

Every request is a streaming ``/v1/completions`` call with ``stream_options.include_usage``; TTFT is measured
by the client as the time to the first chunk carrying text. Columns: prefix-cache hit rate (tokens, summed
over the fleet from the simulators' ``/sim/stats`` counters), TTFT mean/p50/p99, end-to-end latency mean/p99,
workflow completion time (arrival to the last agent's last token) mean/p99, throughput (successful requests/s
and output tokens/s from the first arrival to the last response), load imbalance (max/mean requests per
instance, from ``/sim/stats``) and failed requests (non-200 answers, errors in the stream, exceptions and
deadline overruns). Two more figures help read them: ``sim TTFT``, the mean TTFT the engines measured in
simulated ms (no router, client or CPU overhead: robust to a busy machine), and the workload's hit-rate
ceiling (one infinite cache that has seen every earlier request), printed above the table.

Latencies are wall-clock at ``--time-scale`` (simulated GPU seconds x time scale = wall seconds): divide a
latency by the time scale for its simulated H100 figure (router and client overheads, which do not scale, are
then overstated by the same factor). Prints figures; asserts nothing. ``--quick`` is a tiny run (tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.peers import (
    VLLM_ROUTER_VERSION,
    prefix_decisions,
    start_fleet,
    start_vllm_router,
    stop_all,
    vllm_router_binary,
)
from benchmarks.stack import Stack, StackOptions
from benchmarks.workload import SHAPES, Plan, Workflow, WorkloadConfig, estimate_tokens, generate

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # "envoy" (Envoy-only baseline), "ours" (Envoy + ext_proc) or "vllm-router"
    description: str
    lb_policy: str | None = None  # Envoy's own balancer for the baselines
    metadata: bool = False  # send workflow_metadata
    router_policy: str | None = None  # vllm-router --policy


CONTENDERS: dict[str, Contender] = {c.name: c for c in (
    Contender("round-robin", "envoy", "Envoy ROUND_ROBIN over the fleet (no ext_proc)", lb_policy="ROUND_ROBIN"),
    Contender("least-loaded", "envoy", "Envoy LEAST_REQUEST over the fleet (no ext_proc)",
              lb_policy="LEAST_REQUEST"),
    Contender("prefix-aware", "ours", "our ext_proc, no workflow_metadata: prompt-prefix + load scorers"),
    Contender("workflow-aware", "ours", "our ext_proc, workflow_metadata: workflow affinity", metadata=True),
    Contender("vllm-router/round_robin", "vllm-router", "vllm-router --policy round_robin",
              router_policy="round_robin"),
    Contender("vllm-router/consistent_hash", "vllm-router",
              "vllm-router --policy consistent_hash, X-Session-ID = workflow id", router_policy="consistent_hash"),
    Contender("vllm-router/cache_aware", "vllm-router", "vllm-router --policy cache_aware (default thresholds)",
              router_policy="cache_aware"),
)}

# Column key -> (header, width, format) of the printed table.
COLUMNS: tuple[tuple[str, str, int, str], ...] = (
    ("hit_rate", "hit %", 6, "{:.1%}"),
    ("ttft_mean_ms", "TTFT mean", 9, "{:.0f}"),
    ("ttft_p50_ms", "p50", 6, "{:.0f}"),
    ("ttft_p99_ms", "p99", 6, "{:.0f}"),
    ("e2e_mean_s", "E2E mean", 8, "{:.2f}"),
    ("e2e_p99_s", "p99", 6, "{:.2f}"),
    ("workflow_mean_s", "WF mean", 7, "{:.2f}"),
    ("workflow_p99_s", "p99", 6, "{:.2f}"),
    ("requests_per_s", "req/s", 6, "{:.2f}"),
    ("output_tokens_per_s", "out tok/s", 9, "{:.0f}"),
    ("imbalance", "imbal", 5, "{:.2f}"),
    ("failed", "failed", 6, "{:d}"),
    ("engine_ttft_mean_ms", "sim TTFT", 8, "{:.0f}"),
)


@dataclass(frozen=True)
class RunSettings:
    instances: int
    num_gpu_blocks: int
    time_scale: float
    deadline_s: float  # wall seconds one request may take, end to end
    sim_args: tuple[str, ...] = ()
    run_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="compare-routers-")))


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
        body["workflow_metadata"] = {"workflow_id": workflow.workflow_id, "agent_id": spec.name,
                                     "context_sharing_strategy": "auto"}
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


# --- the fleets and routers -------------------------------------------------------------------------------
def run_contender(contender: Contender, plan: Plan, settings: RunSettings) -> dict[str, Any]:
    """A fresh fleet, the contender's router in front of it, the replay; everything stopped afterwards."""
    run_dir = settings.run_dir / f"{plan.config.shape}-{contender.name.replace('/', '-')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    sim_args = ("--time-scale", str(settings.time_scale), "--num-gpu-blocks", str(settings.num_gpu_blocks),
                "--log-level", "warning", *settings.sim_args)
    fleet = start_fleet(settings.instances, sim_args, run_dir)
    sims = [f"http://127.0.0.1:{p.ports['http']}" for p in fleet.values()]
    try:
        if contender.kind in ("envoy", "ours"):
            options = StackOptions(
                listen_port=0, admin_port=0, with_a2a=False, time_scale=settings.time_scale,
                external_backends={name: p.ports["http"] for name, p in fleet.items()},
                baseline_lb_policy=contender.lb_policy, log_level="warning", run_dir=run_dir,
            )
            with Stack(options) as stack:
                return asyncio.run(replay(stack.url, sims, plan, contender, settings))
        binary = vllm_router_binary()
        assert binary is not None and contender.router_policy is not None
        router, url, metrics_url = start_vllm_router(binary, contender.router_policy, sims, run_dir)
        try:
            result = asyncio.run(replay(url, sims, plan, contender, settings))
            with contextlib.suppress(httpx.HTTPError):
                result["vllm_router_prefix_decisions"] = prefix_decisions(httpx.get(metrics_url, timeout=5).text)
            return result
        finally:
            router.stop()
    finally:
        stop_all(fleet.values())


# --- output -----------------------------------------------------------------------------------------------
def _cell(value: Any, width: int, fmt: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return f"{'-':>{width}}"
    return f"{fmt.format(value):>{width}}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    name_width = max([len("contender"), *(len(n) for n in results)])
    header = f"{'contender':<{name_width}} " + " ".join(f"{h:>{w}}" for _, h, w, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for name, row in results.items():
        if "error" in row:
            lines.append(f"{name:<{name_width}} ERROR: {row['error']}")
            continue
        lines.append(f"{name:<{name_width}} " + " ".join(_cell(row[k], w, f) for k, _, w, f in COLUMNS))
    return "\n".join(lines)


def plan_figures(plan: Plan, settings: RunSettings) -> dict[str, Any]:
    summary = plan.summary()
    # Distinct tokens the run puts in KV: shared system and role prompts once, every context, every output
    # (each output is generated once and then re-read in later prompts).
    distinct = (summary["system_tokens"] + summary["role_tokens_total"] + summary["context_tokens_total"]
                + summary["output_tokens_total"])
    capacity = settings.instances * settings.num_gpu_blocks * 16
    largest = max(estimate_tokens(w.prompt(a.index, dict.fromkeys(range(len(w.agents)), " x" * 160)))
                  + a.max_tokens for w in plan.workflows for a in w.agents)
    return {**summary, "distinct_tokens_estimate": distinct, "fleet_kv_tokens": capacity,
            "per_instance_kv_tokens": settings.num_gpu_blocks * 16, "largest_request_tokens_estimate": largest}


def write_plot(path: Path, shapes: dict[str, dict[str, dict[str, Any]]], time_scale: float) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return f"plot skipped: matplotlib is not installed (pip install 'matplotlib>=3.8'); {path} not written"
    rows = [(shape, {n: r for n, r in results.items() if "error" not in r}) for shape, results in shapes.items()]
    fig, axes = plt.subplots(len(rows), 2, figsize=(13, 4.2 * len(rows)), squeeze=False)
    for (shape, results), (cdf, bars) in zip(rows, axes, strict=True):
        for name, row in results.items():
            ttft = [t * 1e3 for t in row["ttft_s"]]
            if ttft:
                cdf.plot(ttft, [(i + 1) / len(ttft) for i in range(len(ttft))], label=name, drawstyle="steps-post")
        cdf.set_xscale("log")
        cdf.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        cdf.set_xlabel(f"TTFT (ms, wall clock at time scale {time_scale:g})")
        cdf.set_ylabel("fraction of requests")
        cdf.set_title(f"TTFT CDF — {shape}")
        cdf.grid(True, which="both", alpha=0.3)
        cdf.legend(fontsize=8)
        names = list(results)
        rates = [results[n]["hit_rate"] * 100 for n in names]
        bars.barh(names, rates, color="tab:blue")
        for y, rate in enumerate(rates):
            bars.text(rate + 1, y, f"{rate:.1f}%", va="center", fontsize=8)
        ceilings = [r["oracle_hit_rate"] * 100 for r in results.values() if "oracle_hit_rate" in r]
        if ceilings:
            bars.axvline(statistics.fmean(ceilings), color="gray", linestyle="--", linewidth=1)
            bars.text(statistics.fmean(ceilings) + 1, len(names) - 0.6, "workload ceiling", color="gray", fontsize=8)
        bars.set_xlim(0, 110)
        bars.invert_yaxis()
        bars.set_xlabel("prefix-cache hit rate (% of prompt tokens, fleet total)")
        bars.set_title(f"Prefix-cache hit rate — {shape}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"


# --- the command ------------------------------------------------------------------------------------------
QUICK_WORKLOAD = WorkloadConfig(workflows=6, arrival_rate=2.0, chain_agents=(2, 3), fanout_workers=(2, 2),
                                system_tokens=100, role_tokens=150, context_tokens=(200, 500),
                                output_tokens=(8, 24))
FULL_WORKLOAD = WorkloadConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compare-routers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny workload and fleet (a few seconds per contender)")
    parser.add_argument("--shape", choices=[*SHAPES, "both"], default="context-first",
                        help="prompt shape (see benchmarks/workload.py)")
    parser.add_argument("--contenders", default="all",
                        help=f"comma list of {', '.join(CONTENDERS)}; 'vllm-router' = its three policies; 'all'")
    parser.add_argument("--instances", type=int, default=None, help="simulated vLLM instances (default 4; quick 2)")
    parser.add_argument("--workflows", type=int, default=None, help="workflows in the plan (default 40; quick 6)")
    parser.add_argument("--arrival-rate", type=float, default=None,
                        help="workflows per simulated second (default 0.5; quick 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workload generator")
    parser.add_argument("--time-scale", type=float, default=None,
                        help="wall seconds per simulated GPU second (default 0.25; quick 0.05)")
    parser.add_argument("--num-gpu-blocks", type=int, default=None,
                        help="KV blocks (16 tokens) per instance (default 512 = 8192 tokens; quick 128)")
    parser.add_argument("--profile", default=None, help="simulator latency profile (default: the simulator's)")
    parser.add_argument("--deadline", type=float, default=None, help="wall seconds per request (default 120)")
    parser.add_argument("--json-out", type=Path, default=None, help="write every figure to this JSON file")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG: TTFT CDFs and hit rates")
    parser.add_argument("--run-dir", type=Path, default=None, help="logs of the fleets and routers")
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def select_contenders(spec: str) -> list[Contender]:
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item == "all":
            names += list(CONTENDERS)
        elif item == "vllm-router":
            names += [n for n in CONTENDERS if n.startswith("vllm-router/")]
        elif item in CONTENDERS:
            names.append(item)
        else:
            raise SystemExit(f"unknown contender {item!r}; choose from {', '.join(CONTENDERS)}")
    return [CONTENDERS[n] for n in dict.fromkeys(names)]


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parse(argv)
    base = QUICK_WORKLOAD if ns.quick else FULL_WORKLOAD
    workload = replace(base, workflows=ns.workflows or base.workflows,
                       arrival_rate=ns.arrival_rate or base.arrival_rate)
    settings = RunSettings(
        instances=ns.instances or (2 if ns.quick else 4),
        num_gpu_blocks=ns.num_gpu_blocks or (128 if ns.quick else 512),
        time_scale=ns.time_scale if ns.time_scale is not None else (0.05 if ns.quick else 0.25),
        deadline_s=ns.deadline or (60.0 if ns.quick else 120.0),
        sim_args=("--profile", ns.profile) if ns.profile else (),
        run_dir=ns.run_dir or Path(tempfile.mkdtemp(prefix="compare-routers-")),
    )
    contenders = select_contenders(ns.contenders)
    shapes = list(SHAPES) if ns.shape == "both" else [ns.shape]
    binary = vllm_router_binary()
    skipped: dict[str, str] = {}
    if binary is None:
        for c in contenders:
            if c.kind == "vllm-router":
                skipped[c.name] = (f"the vllm-router executable was not found (pip install "
                                   f"vllm-router=={VLLM_ROUTER_VERSION}); no row is shown for it")
        contenders = [c for c in contenders if c.kind != "vllm-router"]

    report: dict[str, Any] = {
        "settings": {"instances": settings.instances, "num_gpu_blocks": settings.num_gpu_blocks,
                     "block_size": 16, "time_scale": settings.time_scale, "deadline_s": settings.deadline_s,
                     "profile": ns.profile or "simulator default", "seed": ns.seed, "quick": ns.quick,
                     "workload": asdict(workload)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "contenders": {c.name: c.description for c in contenders},
        "skipped": skipped,
        "shapes": {},
    }
    print(f"logs: {settings.run_dir}", flush=True)
    for shape in shapes:
        plan = generate(replace(workload, shape=shape), random.Random(ns.seed))
        figures = plan_figures(plan, settings)
        results: dict[str, dict[str, Any]] = {}
        for contender in contenders:
            started = time.monotonic()
            print(f"[{shape}] {contender.name}: running ...", flush=True)
            try:
                results[contender.name] = run_contender(contender, plan, settings)
            except Exception as exc:  # a contender that cannot start is reported, never replaced by numbers
                results[contender.name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(f"[{shape}] {contender.name}: done in {time.monotonic() - started:.1f}s", flush=True)
        report["shapes"][shape] = {"plan": figures, "results": results}
        print_shape(shape, figures, results, settings, skipped)
    if ns.json_out:
        ns.json_out.parent.mkdir(parents=True, exist_ok=True)
        ns.json_out.write_text(json.dumps(report, indent=1, default=str))
        print(f"JSON written to {ns.json_out}")
    if ns.plot:
        print(write_plot(ns.plot, {s: v["results"] for s, v in report["shapes"].items()}, settings.time_scale))
    return 0


def print_shape(shape: str, figures: dict[str, Any], results: dict[str, dict[str, Any]], settings: RunSettings,
                skipped: dict[str, str]) -> None:
    scale = settings.time_scale
    print()
    print(f"=== ROUTER COMPARISON — shape {shape}: {figures['workflows']} workflows ({figures['chains']} chains, "
          f"{figures['fan_outs']} fan-outs), {figures['requests']} requests, arrivals over "
          f"{figures['last_arrival_s']:.0f} simulated s ===")
    distinct, fleet = figures["distinct_tokens_estimate"], figures["fleet_kv_tokens"]
    print(f"fleet: {settings.instances} simulated vLLM instances x {settings.num_gpu_blocks} KV blocks x 16 tokens "
          f"= {fleet:,} tokens; the plan's distinct tokens ~{distinct:,} ({distinct / fleet:.1f}x the fleet's KV); "
          f"largest request ~{figures['largest_request_tokens_estimate']:,} tokens")
    print(f"latencies: wall clock with the simulated GPU at time scale {scale:g} (1 simulated s = {scale:g} s wall); "
          f"divide by {scale:g} for simulated H100 seconds, multiply req/s and tok/s by {scale:g}")
    print(f"TTFT in ms; E2E and workflow completion (WF) in s; hit % = prefix-cache hit tokens / prompt tokens "
          f"over the fleet; imbal = max/mean requests per instance; machine: {os.cpu_count()} CPUs, shared by the "
          f"fleet, the routers and this client")
    print("sim TTFT = mean TTFT in simulated ms as the engines measured it (no router, client or CPU overhead)")
    oracle = [r["oracle_hit_rate"] for r in results.values() if "oracle_hit_rate" in r]
    if oracle:
        print(f"hit-rate ceiling of this workload: {statistics.fmean(oracle):.1%} (one infinite cache that saw every "
              f"earlier request; the role prompt, task line and newest transcript entry are new to every request)")
    print(format_table(results))
    if any(c.startswith("vllm-router/") for c in results):
        print("vllm-router: every request carries X-Session-ID = its workflow id (consistent_hash hashes it); the "
              "fleet answers vLLM's /tokenize so cache_aware gets token ids (benchmarks/peers.py)")
    for name, row in results.items():
        decisions = row.get("vllm_router_prefix_decisions")
        if decisions:
            print(f"{name} prefix decisions: " + ", ".join(f"{k}={v:.0f}" for k, v in sorted(decisions.items())))
    for name, reason in skipped.items():
        print(f"{name}: skipped: {reason}")
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
