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
import os
import platform
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks.compare_routers._contenders import CONTENDERS, MODEL, Contender, RunSettings
from benchmarks.compare_routers._replay import (
    RequestRecord,
    oracle_hit_rate,
    percentile,
    replay,
    request_body,
    run_workflow,
    stream_completion,
    summarize,
)
from benchmarks.compare_routers._report import COLUMNS, format_table, plan_figures, print_shape, write_plot
from benchmarks.peers import (
    VLLM_ROUTER_VERSION,
    prefix_decisions,
    start_fleet,
    start_vllm_router,
    stop_all,
    vllm_router_binary,
)
from benchmarks.stack import Stack, StackOptions
from benchmarks.workload import SHAPES, Plan, WorkloadConfig, generate

__all__ = [
    "COLUMNS",
    "CONTENDERS",
    "FULL_WORKLOAD",
    "MODEL",
    "QUICK_WORKLOAD",
    "Contender",
    "RequestRecord",
    "RunSettings",
    "build_parser",
    "format_table",
    "main",
    "oracle_hit_rate",
    "percentile",
    "plan_figures",
    "print_shape",
    "replay",
    "request_body",
    "run_contender",
    "run_workflow",
    "select_contenders",
    "stream_completion",
    "summarize",
    "vllm_router_binary",
    "write_plot",
]


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
