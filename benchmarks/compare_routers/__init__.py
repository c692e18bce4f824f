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

The matrix
----------
Every axis flag takes a comma list, and the run is their product, one *cell* per combination: ``--shape``
(``context-first``, ``role-first``, ``fan-out``, ``tool-loop`` from ``benchmarks/workload.py``; ``mooncake``, a
replay of ``--trace`` by ``benchmarks/mooncake.py``, skipped with a message if the file is absent; ``all``),
``--instances``, ``--kv`` (``fits`` / ``pressure``), ``--load`` (``low`` / ``high`` / a utilisation / ``as-is``)
and ``--profile``; ``_matrix.py`` defines each level. Within a cell every contender replays the same plan
(every arrival and choice drawn from ``--seed``) on a fresh fleet. Each cell prints its table, the load it
offers (prefill utilisation with no cache hit and at the hit-rate ceiling), the ceiling, and the ratio rows
``contender mean / workflow-aware mean`` for TTFT, workflow completion and engine TTFT (>= 1.00: ours, with
metadata, is faster) with the best other contender; the run ends with one summary line per cell. ``--json-out``
holds every cell (``cells``; ``shapes`` keeps the one-table-per-shape layout when a shape has one cell).

``--matrix`` (= ``--matrix core``) runs every shape x KV fits,pressure x load low,high on 4 instances with the
default profile: 20 cells x 7 contenders, plans of 20 workflows (context-first, role-first), 12 (fan-out:
4-8 siblings; tool-loop: 4-8 turns) and 60 trace requests, time scale 0.1. ``--matrix full`` adds 8 instances
and the compute-bound profile (80 cells). Estimated wall time on the 2-core development machine (printed
before a run starts): core ~27 min, full ~70 min or more (measured figures: ``docs/benchmark-matrix.md``)::

    python -m benchmarks.compare_routers --matrix --json-out matrix.json
    python -m benchmarks.compare_routers --matrix full --json-out matrix-full.json
    python -m benchmarks.compare_routers --quick --shape all --contenders round-robin,workflow-aware
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
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks.compare_routers._contenders import CONTENDERS, MODEL, Contender, RunSettings
from benchmarks.compare_routers._matrix import (
    KV_LEVELS,
    LOADS,
    OURS,
    Cell,
    fleet_prefill_capacity,
    kv_blocks,
    load_target,
    parse_list,
    ratios,
    scale_to_load,
    summary_line,
)
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
from benchmarks.compare_routers._report import (
    COLUMNS,
    format_ratios,
    format_table,
    plan_figures,
    print_shape,
    write_plot,
)
from benchmarks.mooncake import (
    BLOCK_TOKENS,
    DEFAULT_TRACE,
    SELECTIONS,
    TraceRequest,
    block_ceiling,
    load_trace,
    plan_from_trace,
)
from benchmarks.peers import (
    VLLM_ROUTER_VERSION,
    prefix_decisions,
    start_fleet,
    start_vllm_router,
    stop_all,
    vllm_router_binary,
)
from benchmarks.simulator.profile import DEFAULT_PROFILE, load_profile
from benchmarks.stack import Stack, StackOptions
from benchmarks.workload import (
    CONTEXT_FIRST,
    FAN_OUT,
    MOONCAKE,
    ROLE_FIRST,
    SHAPES,
    TOOL_LOOP,
    Plan,
    WorkloadConfig,
    generate,
)

__all__ = [
    "COLUMNS",
    "CONTENDERS",
    "FULL_WORKLOAD",
    "KV_LEVELS",
    "LOADS",
    "MATRIX_PRESETS",
    "MODEL",
    "QUICK_WORKLOAD",
    "Cell",
    "Contender",
    "RequestRecord",
    "RunSettings",
    "build_parser",
    "build_plan",
    "format_ratios",
    "format_table",
    "main",
    "oracle_hit_rate",
    "percentile",
    "plan_figures",
    "print_shape",
    "ratios",
    "replay",
    "request_body",
    "run_contender",
    "run_workflow",
    "select_contenders",
    "select_shapes",
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
                "--log-level", "warning", *settings.sim_args, *contender.sim_args)
    fleet = start_fleet(settings.instances, sim_args, run_dir)
    sims = [f"http://127.0.0.1:{p.ports['http']}" for p in fleet.values()]
    try:
        if contender.kind in ("envoy", "ours"):
            options = StackOptions(
                listen_port=0, admin_port=0, with_a2a=False, time_scale=settings.time_scale,
                external_backends={name: p.ports["http"] for name, p in fleet.items()},
                baseline_lb_policy=contender.lb_policy, log_level="warning", run_dir=run_dir,
                extproc_args=contender.extproc_args,
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
                                output_tokens=(8, 24), tool_turns=(3, 4), tool_pause_s=(1.0, 3.0),
                                tool_result_tokens=(40, 80))
FULL_WORKLOAD = WorkloadConfig()
# Per-shape adjustments: the fan-out shape's fan-outs are heavy; quick keeps them small.
SHAPE_WORKLOAD: dict[str, dict[str, Any]] = {FAN_OUT: {"fanout_workers": (4, 8)}}
QUICK_SHAPE_WORKLOAD: dict[str, dict[str, Any]] = {FAN_OUT: {"fanout_workers": (3, 4)}}
# The --matrix presets: axes, plan sizes and time scale (see the package docstring for the wall-time estimate).
MATRIX_PRESETS: dict[str, dict[str, Any]] = {
    "core": {"shape": "all", "instances": "4", "kv": "fits,pressure", "load": "low,high", "profile": DEFAULT_PROFILE},
    "full": {"shape": "all", "instances": "4,8", "kv": "fits,pressure", "load": "low,high",
             "profile": f"{DEFAULT_PROFILE},{DEFAULT_PROFILE}-compute"},
}
MATRIX_WORKFLOWS: dict[str, int] = {CONTEXT_FIRST: 20, ROLE_FIRST: 20, FAN_OUT: 12, TOOL_LOOP: 12}
MATRIX_TRACE_LIMIT = 60
MATRIX_TIME_SCALE = 0.1
QUICK_TRACE_LIMIT = 12
QUICK_TRACE_SPEEDUP = 40.0
SHAPE_CHOICES = (*SHAPES, "both", "all")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compare-routers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny workload and fleet (a few seconds per contender)")
    parser.add_argument("--matrix", nargs="?", const="core", choices=list(MATRIX_PRESETS), default=None,
                        help="run a preset matrix (core: every shape x KV fits,pressure x load low,high on 4 "
                             "instances, default profile; full: also 8 instances and the compute profile); "
                             "explicit axis flags override the preset's")
    parser.add_argument("--shape", default=None, type=_shape_list,
                        help=f"comma list of {', '.join(SHAPES)}; 'both' = context-first,role-first; 'all' "
                             "(default context-first; see benchmarks/workload.py and benchmarks/mooncake.py)")
    parser.add_argument("--ours", default=OURS,
                        help="the contender every ratio is against (ours with metadata; e.g. "
                             "workflow-aware/cost-model)")
    parser.add_argument("--contenders", default="all",
                        help=f"comma list of {', '.join(CONTENDERS)}; 'vllm-router' = its three policies; 'all'")
    parser.add_argument("--instances", default=None,
                        help="simulated vLLM instances, a comma list (default 4; quick 2)")
    parser.add_argument("--kv", default=None,
                        help="KV per instance, comma list of fits (the plan's distinct tokens fit in each "
                             "instance), pressure (the small default); default pressure; --num-gpu-blocks "
                             "overrides")
    parser.add_argument("--load", default=None,
                        help="comma list of low (0.3), high (0.9), a number (target prefill utilisation with no "
                             "cache hit) or as-is (the plan's own arrival rate / trace speedup; the default)")
    parser.add_argument("--workflows", type=int, default=None, help="workflows in the plan (default 40; quick 6)")
    parser.add_argument("--arrival-rate", type=float, default=None,
                        help="workflows per simulated second before any --load scaling (default 0.5; quick 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workload generator and trace sampling")
    parser.add_argument("--time-scale", type=float, default=None,
                        help="wall seconds per simulated GPU second (default 0.25; quick 0.05; matrix 0.1)")
    parser.add_argument("--num-gpu-blocks", type=int, default=None,
                        help="KV blocks (16 tokens) per instance for every cell, instead of --kv (the pressure "
                             "default is 512 = 8192 tokens; quick 128)")
    parser.add_argument("--profile", default=None,
                        help="simulator profile(s), a comma list of names in benchmarks/simulator/profiles/ "
                             f"(default {DEFAULT_PROFILE})")
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE,
                        help=f"Mooncake trace for the mooncake shape (default {DEFAULT_TRACE}, relative to the "
                             "repository root)")
    parser.add_argument("--trace-limit", type=int, default=None,
                        help=f"requests of the trace to replay (default all; quick {QUICK_TRACE_LIMIT}; matrix "
                             f"{MATRIX_TRACE_LIMIT})")
    parser.add_argument("--trace-select", choices=SELECTIONS, default="sessions",
                        help="which requests --trace-limit keeps: whole derived sessions drawn at random "
                             "(seeded), or the first ones")
    parser.add_argument("--trace-speedup", type=float, default=None,
                        help=f"trace time / replay time under --load as-is (default 1; quick {QUICK_TRACE_SPEEDUP:g})")
    parser.add_argument("--trace-block-tokens", type=int, default=BLOCK_TOKENS,
                        help="tokens each trace hash id becomes (default 512, the trace's; a divisor of 512 "
                             "shrinks every prompt by the same factor, keeping the sharing)")
    parser.add_argument("--deadline", type=float, default=None, help="wall seconds per request (default 120)")
    parser.add_argument("--json-out", type=Path, default=None, help="write every figure to this JSON file")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG: TTFT CDFs and hit rates")
    parser.add_argument("--run-dir", type=Path, default=None, help="logs of the fleets and routers")
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ns = build_parser().parse_args(argv)
    if ns.matrix:
        for key, value in MATRIX_PRESETS[ns.matrix].items():
            if getattr(ns, key) is None:
                setattr(ns, key, value)
    return ns


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


def _shape_list(text: str) -> str:
    """argparse type of --shape: every item must be a shape (checked when the flags are parsed)."""
    unknown = [item for item in (s.strip() for s in text.split(",")) if item and item not in SHAPE_CHOICES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown shape {unknown[0]!r}; choose from {', '.join(SHAPE_CHOICES)}")
    return text


def select_shapes(spec: str | None) -> list[str]:
    shapes: list[str] = []
    for item in parse_list(spec or CONTEXT_FIRST, SHAPE_CHOICES, "shape"):
        shapes += {"both": [CONTEXT_FIRST, ROLE_FIRST], "all": list(SHAPES)}.get(item, [item])
    return list(dict.fromkeys(shapes))


def _trace_path(path: Path) -> Path:
    if path.is_absolute() or path.exists():
        return path
    return Path(__file__).resolve().parents[2] / path  # relative to the repository root


def build_plan(shape: str, ns: argparse.Namespace, trace: list[TraceRequest] | None) -> Plan:
    """The shape's plan at its own arrival rate (trace: at --trace-speedup), before any load scaling."""
    if shape == MOONCAKE:
        assert trace is not None
        limit = ns.trace_limit or (QUICK_TRACE_LIMIT if ns.quick else MATRIX_TRACE_LIMIT if ns.matrix else None)
        speedup = ns.trace_speedup or (QUICK_TRACE_SPEEDUP if ns.quick else 1.0)
        return plan_from_trace(trace, limit=limit, selection=ns.trace_select, speedup=speedup,
                               block_tokens=ns.trace_block_tokens, seed=ns.seed)
    base = QUICK_WORKLOAD if ns.quick else FULL_WORKLOAD
    extra = (QUICK_SHAPE_WORKLOAD if ns.quick else SHAPE_WORKLOAD).get(shape, {})
    workflows = ns.workflows or (MATRIX_WORKFLOWS[shape] if ns.matrix and not ns.quick else base.workflows)
    config = replace(base, shape=shape, workflows=workflows, arrival_rate=ns.arrival_rate or base.arrival_rate,
                     **extra)
    return generate(config, random.Random(ns.seed))


def _cells(ns: argparse.Namespace, shapes: list[str]) -> list[Cell]:
    instances = [int(i) for i in parse_list(ns.instances or ("2" if ns.quick else "4"), None, "instances")]
    if any(i < 1 for i in instances):
        raise SystemExit("--instances: every fleet needs at least one instance")
    if ns.num_gpu_blocks:
        kvs = [f"{ns.num_gpu_blocks} blocks"]
    else:
        kvs = parse_list(ns.kv or "pressure", KV_LEVELS, "KV level")
    loads = parse_list(ns.load or "as-is", None, "load")
    for load in loads:
        load_target(load)
    profiles = parse_list(ns.profile or DEFAULT_PROFILE, None, "profile")
    for profile in profiles:
        try:
            load_profile(profile)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--profile {profile}: {exc}") from None
    return [Cell(shape, n, kv, load, profile) for shape in shapes for profile in profiles for n in instances
            for kv in kvs for load in loads]


def estimate_wall_s(cell_spans: Sequence[tuple[Cell, float]], contenders: int, time_scale: float) -> float:
    """A rough wall-time estimate: per run, fleet and router start-up plus the arrival span at the time
    scale plus a drain of half the span (measured on this 2-core machine; see the package docstring)."""
    total = 0.0
    for cell, span in cell_spans:
        total += contenders * (STARTUP_S + STARTUP_PER_INSTANCE_S * cell.instances + 1.5 * span * time_scale)
    return total


STARTUP_S = 1.0
STARTUP_PER_INSTANCE_S = 0.4


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parse(argv)
    shapes = select_shapes(ns.shape)
    trace: list[TraceRequest] | None = None
    trace_note = ""
    if MOONCAKE in shapes:
        path = _trace_path(ns.trace)
        if path.exists():
            trace = load_trace(path)
        else:
            shapes.remove(MOONCAKE)
            trace_note = (f"mooncake: skipped: the trace {path} does not exist (pass --trace PATH; the format is "
                          f"described in benchmarks/mooncake.py)")
            print(trace_note, flush=True)
    cells = _cells(ns, shapes)
    time_scale = ns.time_scale if ns.time_scale is not None else (
        0.05 if ns.quick else MATRIX_TIME_SCALE if ns.matrix else 0.25)
    small_kv = 128 if ns.quick else 512
    run_root = ns.run_dir or Path(tempfile.mkdtemp(prefix="compare-routers-"))
    contenders = select_contenders(ns.contenders)
    binary = vllm_router_binary()
    skipped: dict[str, str] = {}
    if binary is None:
        for c in contenders:
            if c.kind == "vllm-router":
                skipped[c.name] = (f"the vllm-router executable was not found (pip install "
                                   f"vllm-router=={VLLM_ROUTER_VERSION}); no row is shown for it")
        contenders = [c for c in contenders if c.kind != "vllm-router"]

    plans = {shape: build_plan(shape, ns, trace) for shape in shapes}
    prepared = []
    for cell in cells:
        capacity = fleet_prefill_capacity(cell.profile, cell.instances)
        plan, load_figures = scale_to_load(plans[cell.shape], cell.load, capacity)
        prepared.append((cell, plan, load_figures))
    estimate = estimate_wall_s([(c, f["span_s"]) for c, _, f in prepared], len(contenders), time_scale)
    workload = replace(QUICK_WORKLOAD if ns.quick else FULL_WORKLOAD, workflows=ns.workflows or (
        QUICK_WORKLOAD if ns.quick else FULL_WORKLOAD).workflows,
        arrival_rate=ns.arrival_rate or (QUICK_WORKLOAD if ns.quick else FULL_WORKLOAD).arrival_rate)
    report: dict[str, Any] = {
        "settings": {"instances": sorted({c.instances for c in cells}), "block_size": 16, "time_scale": time_scale,
                     "deadline_s": ns.deadline or (60.0 if ns.quick else 120.0),
                     "profile": sorted({c.profile for c in cells}), "seed": ns.seed, "quick": ns.quick,
                     "matrix": ns.matrix, "workload": asdict(workload), "estimated_wall_s": estimate,
                     "trace": str(_trace_path(ns.trace)) if MOONCAKE in shapes else None},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "contenders": {c.name: c.description for c in contenders},
        "skipped": skipped | ({MOONCAKE: trace_note} if trace_note else {}),
        "shapes": {},
        "cells": [],
        "summary": [],
    }
    print(f"logs: {run_root}", flush=True)
    if len(cells) > 1:
        print(f"{len(cells)} cells x {len(contenders)} contenders; estimated wall time ~{estimate / 60:.0f} min "
              f"(time scale {time_scale:g})", flush=True)
    started_all = time.monotonic()
    for cell, plan, load_figures in prepared:
        report["cells"].append(run_cell(cell, plan, load_figures, ns, contenders, skipped, time_scale, small_kv,
                                        run_root, trace))
    for entry in report["cells"]:
        report["summary"].append(entry["summary"])
    per_shape = [e["cell"]["shape"] for e in report["cells"]]
    for entry in report["cells"]:  # the single-table layout of earlier versions, when a shape has one cell
        if per_shape.count(entry["cell"]["shape"]) == 1:
            report["shapes"][entry["cell"]["shape"]] = {"plan": entry["plan"], "results": entry["results"]}
    print()
    print(f"=== SUMMARY: {len(cells)} cells, {time.monotonic() - started_all:.0f}s wall; ratios are best other "
          f"contender's mean / {ns.ours}'s mean (>= 1.00: ours faster) ===")
    for line in report["summary"]:
        print(line)
    if trace_note:
        print(trace_note)
    if ns.json_out:
        ns.json_out.parent.mkdir(parents=True, exist_ok=True)
        ns.json_out.write_text(json.dumps(report, indent=1, default=str))
        print(f"JSON written to {ns.json_out}")
    if ns.plot:
        last = {e["cell"]["shape"]: e["results"] for e in report["cells"]}
        print(write_plot(ns.plot, last, time_scale))
    return 0


def run_cell(cell: Cell, plan: Plan, load_figures: dict[str, float], ns: argparse.Namespace,
             contenders: Sequence[Contender], skipped: dict[str, str], time_scale: float, small_kv: int,
             run_root: Path, trace: list[TraceRequest] | None) -> dict[str, Any]:
    """Every contender on one cell: a fresh fleet each, the same plan; the table and the cell's JSON entry."""
    probe = RunSettings(instances=cell.instances, num_gpu_blocks=small_kv, time_scale=time_scale,
                        deadline_s=0.0, run_dir=run_root)
    figures = plan_figures(plan, probe)
    blocks = ns.num_gpu_blocks or kv_blocks(cell.kv, figures["distinct_tokens_estimate"],
                                             figures["largest_request_tokens_estimate"], small_kv)
    slug = "-".join(str(v) for v in cell.as_dict().values()).replace(" ", "").replace("/", "-")
    settings = RunSettings(
        instances=cell.instances, num_gpu_blocks=blocks, time_scale=time_scale,
        deadline_s=ns.deadline or (60.0 if ns.quick else 120.0),
        sim_args=("--profile", cell.profile) if cell.profile != DEFAULT_PROFILE or ns.profile else (),
        run_dir=run_root / slug,
    )
    figures = plan_figures(plan, settings)
    results: dict[str, dict[str, Any]] = {}
    for contender in contenders:
        started = time.monotonic()
        print(f"[{cell.label()}] {contender.name}: running ...", flush=True)
        try:
            results[contender.name] = run_contender(contender, plan, settings)
        except Exception as exc:  # a contender that cannot start is reported, never replaced by numbers
            results[contender.name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(f"[{cell.label()}] {contender.name}: done in {time.monotonic() - started:.1f}s", flush=True)
    oracle = [r["oracle_hit_rate"] for r in results.values() if "oracle_hit_rate" in r]
    ceiling = statistics.fmean(oracle) if oracle else math.nan
    trace_figures = None
    if cell.shape == MOONCAKE and trace is not None:
        names = [int(a.name[1:]) for w in plan.workflows for a in w.agents]
        chosen = [trace[i] for i in sorted(names)]
        trace_figures = (f"{len(chosen)} of {len(trace)} requests ({ns.trace_select}, seed {ns.seed}), "
                         f"{len(plan.workflows)} derived sessions, {ns.trace_block_tokens} tokens per hash id; "
                         f"block-reuse ceiling {block_ceiling(chosen):.1%} of the replayed requests, "
                         f"{block_ceiling(trace):.1%} over the whole trace")
    entry: dict[str, Any] = {
        "cell": cell.as_dict(), "label": cell.label(), "plan": figures, "load_figures": load_figures,
        "num_gpu_blocks": blocks, "time_scale": time_scale, "hit_rate_ceiling": ceiling,
        "utilisation_at_ceiling": load_figures["utilisation_no_cache"] * (1 - ceiling)
        if math.isfinite(ceiling) else math.nan,
        "trace": trace_figures, "results": results, "ratios": ratios(results, ns.ours), "ours": ns.ours,
    }
    entry["summary"] = summary_line(cell, entry["ratios"], load_figures["utilisation_no_cache"], ceiling, ns.ours)
    print_shape(cell.shape, figures, results, settings, skipped, cell=entry)
    return entry
