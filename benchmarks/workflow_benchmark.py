"""The seed's workflow benchmark, with honest definitions, measured through the gateway on a simulated fleet.

  python -m benchmarks.workflow_benchmark --url http://localhost:8001 --agents 5 --iterations 10 --benchmarks all

Definitions (every figure comes from responses the client received; nothing is modelled here):
- sequential: one workflow whose agents run one after another; each agent's prompt is the shared system
  prompt + the workflow's context + the transcript so far + its role, so later agents can reuse the KV cache
  of what earlier agents sent. Reports total time, mean latency, success rate.
- parallel: the same agents of one workflow fired at once (a fan-out: each sees the shared context and the
  transcript of previous iterations, not of its siblings). Speedup = sequential total / parallel total.
- cache: the same multi-agent workflow (sequential agents, several iterations, each iteration a new workflow
  id with its own context) run twice on the same fleet — with ``workflow_metadata`` and without it. Reports
  mean TTFT (time to the first streamed token), mean end-to-end latency, and the cached-token rate
  (``usage.prompt_tokens_details.cached_tokens`` / ``prompt_tokens``). Without metadata our gateway falls back
  to prefix-aware routing, which finds a context-first workflow's shared prefix too: the comparison shows what
  the metadata adds over that, not over random routing (benchmarks/compare_routers/ compares routers).
- a2a: messages sent to one agent's queue and received by long-poll, through the gateway's /v1/workflows
  routes: per-message send latency, receive latency of a waiting message, and throughput of send+receive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import orjson

from a2a_service.client import A2AClient

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SYSTEM = "You are part of a team of analysts. Answer precisely, cite the context, keep it short. " * 4
ROLES = ("collector", "analyzer", "critic", "planner", "reporter", "reviewer", "summarizer", "auditor")


def context_for(workflow_id: str) -> str:
    seed = sum(map(ord, workflow_id))
    return " ".join(f"Item {i} of {workflow_id}: value {(seed * (i + 3)) % 997}, trend {(seed + i) % 7 - 3}."
                    for i in range(60))


@dataclass
class Call:
    ok: bool
    ttft: float
    latency: float
    prompt_tokens: int = 0
    cached_tokens: int = 0
    text: str = ""


@dataclass
class Figures:
    total_s: float = 0.0
    calls: list[Call] = field(default_factory=list)

    def mean(self, attr: str) -> float:
        values = [getattr(c, attr) for c in self.calls if c.ok]
        return statistics.fmean(values) if values else float("nan")

    @property
    def success_rate(self) -> float:
        return sum(c.ok for c in self.calls) / len(self.calls) if self.calls else 0.0

    @property
    def cached_rate(self) -> float:
        prompt = sum(c.prompt_tokens for c in self.calls)
        return sum(c.cached_tokens for c in self.calls) / prompt if prompt else 0.0

    def summary(self) -> dict[str, float]:
        return {"total_s": self.total_s, "mean_latency_s": self.mean("latency"), "mean_ttft_s": self.mean("ttft"),
                "success_rate": self.success_rate, "cached_token_rate": self.cached_rate, "requests": len(self.calls)}


async def call(client: httpx.AsyncClient, url: str, prompt: str, workflow_id: str | None, agent: str,
               max_tokens: int) -> Call:
    body: dict[str, object] = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                               "stream_options": {"include_usage": True}}
    if workflow_id is not None:
        body["workflow_metadata"] = {"workflow_id": workflow_id, "agent_id": agent}
    started = time.perf_counter()
    ttft = 0.0
    text, usage = [], {}
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return Call(False, 0.0, time.perf_counter() - started)
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = orjson.loads(line[6:])
                if chunk.get("choices"):
                    if not ttft:
                        ttft = time.perf_counter() - started
                    text.append(chunk["choices"][0].get("text", ""))
                if chunk.get("usage"):
                    usage = chunk["usage"]
    except httpx.HTTPError:
        return Call(False, 0.0, time.perf_counter() - started)
    return Call(True, ttft, time.perf_counter() - started, usage.get("prompt_tokens", 0),
                (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0), "".join(text))


def prompt_of(workflow_id: str, transcript: str, agent: str) -> str:
    return f"{SYSTEM}\nContext:\n{context_for(workflow_id)}\nTranscript:\n{transcript}\n{agent}: do your part.\n"


async def sequential(client: httpx.AsyncClient, url: str, agents: int, workflow_id: str | None,
                     context_id: str, max_tokens: int) -> Figures:
    figures, transcript = Figures(), ""
    started = time.perf_counter()
    for k in range(agents):
        agent = ROLES[k % len(ROLES)]
        result = await call(client, url, prompt_of(context_id, transcript, agent), workflow_id, agent, max_tokens)
        figures.calls.append(result)
        transcript += f"{agent}: {result.text.strip()}\n"
    figures.total_s = time.perf_counter() - started
    return figures


async def parallel(client: httpx.AsyncClient, url: str, agents: int, workflow_id: str, max_tokens: int) -> Figures:
    figures = Figures()
    started = time.perf_counter()
    calls = [call(client, url, prompt_of(workflow_id, "", ROLES[k % len(ROLES)]), workflow_id,
                  ROLES[k % len(ROLES)], max_tokens) for k in range(agents)]
    figures.calls = list(await asyncio.gather(*calls))
    figures.total_s = time.perf_counter() - started
    return figures


async def cache_efficiency(client: httpx.AsyncClient, url: str, agents: int, iterations: int,
                           max_tokens: int) -> tuple[Figures, Figures]:
    run = uuid.uuid4().hex[:6]
    with_meta, without = Figures(), Figures()
    for i in range(iterations):
        # Each arm gets its own contexts so neither warms the cache for the other.
        for figures, label, metadata in ((with_meta, "with", True), (without, "without", False)):
            context_id = f"cache-{run}-{label}-{i}"
            result = await sequential(client, url, agents, context_id if metadata else None, context_id,
                                      max_tokens)
            figures.calls += result.calls
            figures.total_s += result.total_s
    return with_meta, without


async def a2a_figures(url: str, messages: int) -> dict[str, float]:
    workflow_id = f"a2a-bench-{uuid.uuid4().hex[:6]}"
    sends, receives = [], []
    async with A2AClient(url) as a2a:
        started = time.perf_counter()
        for i in range(messages):
            t0 = time.perf_counter()
            await a2a.send(workflow_id, "producer", "consumer", {"i": i, "data": "x" * 64})
            t1 = time.perf_counter()
            got = await a2a.receive(workflow_id, "consumer", timeout=5, max_messages=1)
            t2 = time.perf_counter()
            assert got, "message not received"
            sends.append(t1 - t0)
            receives.append(t2 - t1)
        total = time.perf_counter() - started
        await a2a.delete_workflow(workflow_id)
    return {"messages": messages, "send_ms": statistics.fmean(sends) * 1e3,
            "receive_ms": statistics.fmean(receives) * 1e3, "throughput_msgs_s": messages / total}


async def run(ns: argparse.Namespace) -> dict[str, object]:
    chosen = {"sequential", "parallel", "cache", "a2a"} if ns.benchmarks == "all" else {ns.benchmarks}
    report: dict[str, object] = {"url": ns.url, "agents": ns.agents, "iterations": ns.iterations}
    async with httpx.AsyncClient(timeout=ns.timeout, limits=httpx.Limits(max_connections=200)) as client:
        seq = par = None
        if chosen & {"sequential", "parallel"}:
            workflow_id = f"seq-{uuid.uuid4().hex[:6]}"
            seq = await sequential(client, ns.url, ns.agents, workflow_id, workflow_id, ns.max_tokens)
            report["sequential"] = seq.summary()
        if "parallel" in chosen:
            par = await parallel(client, ns.url, ns.agents, f"par-{uuid.uuid4().hex[:6]}", ns.max_tokens)
            report["parallel"] = {**par.summary(), "speedup": seq.total_s / par.total_s if seq else None}
        if "cache" in chosen:
            with_meta, without = await cache_efficiency(client, ns.url, ns.agents, ns.iterations, ns.max_tokens)
            report["cache"] = {"with_workflow": with_meta.summary(), "without_workflow": without.summary()}
    if "a2a" in chosen:
        report["a2a"] = await a2a_figures(ns.url, ns.messages)
    return report


def print_summary(report: dict[str, object], ns: argparse.Namespace) -> None:
    print("=== BENCHMARK SUMMARY ===")
    seq = report.get("sequential")
    if isinstance(seq, dict) and ns.benchmarks in ("all", "sequential"):
        print(f"Sequential ({ns.agents} agents):")
        print(f"  Total time: {seq['total_s']:.2f}s")
        print(f"  Average latency: {seq['mean_latency_s']:.2f}s")
        print(f"  Success rate: {seq['success_rate'] * 100:.1f}%")
    par = report.get("parallel")
    if isinstance(par, dict):
        print(f"\nParallel ({ns.agents} agents):")
        print(f"  Total time: {par['total_s']:.2f}s")
        print(f"  Average latency: {par['mean_latency_s']:.2f}s")
        if par.get("speedup"):
            print(f"  Speedup: {par['speedup']:.2f}x")
        print(f"  Success rate: {par['success_rate'] * 100:.1f}%")
    cache = report.get("cache")
    if isinstance(cache, dict):
        w, wo = cache["with_workflow"], cache["without_workflow"]
        print(f"\nCache efficiency ({ns.iterations} iterations x {ns.agents} agents):")
        print(f"  With workflow: TTFT {w['mean_ttft_s'] * 1e3:.0f}ms, latency {w['mean_latency_s']:.2f}s, "
              f"cached tokens {w['cached_token_rate'] * 100:.1f}%")
        print(f"  Without workflow: TTFT {wo['mean_ttft_s'] * 1e3:.0f}ms, latency {wo['mean_latency_s']:.2f}s, "
              f"cached tokens {wo['cached_token_rate'] * 100:.1f}%")
        if w["mean_ttft_s"] > 0:
            print(f"  Cache speedup (TTFT): {wo['mean_ttft_s'] / w['mean_ttft_s']:.2f}x")
            saved = (wo["mean_latency_s"] - w["mean_latency_s"]) * 1e3
            print(f"  Time saved: {saved:.0f}ms per request")
    a2a = report.get("a2a")
    if isinstance(a2a, dict):
        print(f"\nA2A communication ({a2a['messages']} messages):")
        print(f"  Send latency: {a2a['send_ms']:.1f}ms (avg)")
        print(f"  Receive latency: {a2a['receive_ms']:.1f}ms (avg)")
        print(f"  Throughput: {a2a['throughput_msgs_s']:.1f} msgs/sec")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://localhost:8001", help="the gateway (Envoy) URL")
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=10, help="workflows in the cache benchmark")
    parser.add_argument("--benchmarks", choices=["all", "sequential", "parallel", "cache", "a2a"], default="all")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--messages", type=int, default=200, help="messages in the A2A benchmark")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true", help="2 agents, 2 iterations, 20 messages")
    parser.add_argument("--local-stack", action="store_true",
                        help="start a local stack (port 0) and benchmark it instead of --url")
    parser.add_argument("--time-scale", type=float, default=1.0, help="with --local-stack: simulated GPU time scale")
    parser.add_argument("--json-out", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.quick:
        ns.agents, ns.iterations, ns.messages, ns.max_tokens = 2, 2, 20, 8
    if ns.local_stack:
        from benchmarks.stack import Stack, StackOptions

        options = StackOptions(listen_port=0, admin_port=0, time_scale=ns.time_scale, log_level="warning")
        with Stack(options) as stack:
            ns.url = stack.url
            report = asyncio.run(run(ns))
    else:
        report = asyncio.run(run(ns))
    print_summary(report, ns)
    if ns.json_out:
        ns.json_out.parent.mkdir(parents=True, exist_ok=True)
        ns.json_out.write_text(json.dumps(report, indent=2, default=lambda o: asdict(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
