"""What the router comparison prints and draws: the table, the plan's figures, the TTFT/hit-rate plot."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.compare_routers._contenders import RunSettings
from benchmarks.workload import Plan, estimate_tokens

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


def format_ratios(ratios: dict[str, Any], reference: str = "workflow-aware") -> str:
    """The ratio rows: each contender's mean TTFT and mean workflow completion over ours-with-metadata's."""
    per = ratios.get("per_contender")
    if not per:
        return f"ratios: none ({reference}, ours with metadata, is not in this run or failed)"
    width = max(len(n) for n in per)
    title = f"ratio vs {reference} (>= 1.00: ours faster)"
    lines = [f"{title}  {'':<{max(0, width - len(title))}}TTFT mean   WF mean  sim TTFT"]
    for name, row in per.items():
        lines.append(f"  {name:<{width}} " + " ".join(_cell(row[k], 9, "{:.2f}") for k in ("ttft", "workflow",
                                                                                          "sim_ttft")))
    best = ratios.get("best_other") or {}
    parts = [f"{k} {v['ratio']:.2f} ({v['contender']})" for k, v in best.items()]
    verdict = "ours best" if ratios.get("ours_best") else "ours NOT best"
    lines.append("  best other / ours: " + ", ".join(parts) + f" -> {verdict} (on mean TTFT and mean WF)")
    return "\n".join(lines)


def plan_figures(plan: Plan, settings: RunSettings) -> dict[str, Any]:
    summary = plan.summary()
    # Distinct tokens the run puts in KV: shared system and role prompts once, every context (and tool
    # result), every output (each output is generated once and then re-read in later prompts).
    distinct = (summary["system_tokens"] + summary["role_tokens_total"] + summary["context_tokens_total"]
                + summary["output_tokens_total"])
    fixed = [a.fixed_prompt for w in plan.workflows for a in w.agents if a.fixed_prompt is not None]
    if fixed:  # a trace: distinct chained 64-character (16 one-token words) chunks of its prompts
        chunks: set[int] = set()
        for text in fixed:
            parent = 0
            for start in range(0, len(text) - 63, 64):
                parent = hash((parent, text[start:start + 64]))
                chunks.add(parent)
        distinct = len(chunks) * 16 + summary["output_tokens_total"]
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


def print_shape(shape: str, figures: dict[str, Any], results: dict[str, dict[str, Any]], settings: RunSettings,
                skipped: dict[str, str], cell: dict[str, Any] | None = None) -> None:
    """One table; with ``cell`` (a matrix cell: its label, load, KV and ceiling figures) also the cell's header
    lines and the ratio rows against ours-with-metadata."""
    scale = settings.time_scale
    print()
    title = f"shape {shape}" if cell is None else f"cell {cell['label']}"
    print(f"=== ROUTER COMPARISON — {title}: {figures['workflows']} workflows ({figures['chains']} chains, "
          f"{figures['fan_outs']} fan-outs, {figures.get('tool_loops', 0)} tool loops), {figures['requests']} "
          f"requests, arrivals over {figures['last_arrival_s']:.0f} simulated s ===")
    if cell is not None:
        load = cell["load_figures"]
        print(f"load {cell['cell']['load']}: offered {load['offered_prompt_tokens_per_s']:,.0f} prompt tokens/s "
              f"(simulated) vs fleet prefill capacity {load['fleet_prefill_tokens_per_s']:,.0f}/s -> utilisation "
              f"{load['utilisation_no_cache']:.2f} with no cache hit, {cell['utilisation_at_ceiling']:.2f} at the "
              f"hit-rate ceiling (arrival times x{load['arrival_time_factor']:.3g}); profile {cell['cell']['profile']}")
        if cell.get("trace"):
            print(f"trace: {cell['trace']}")
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
    if cell is not None:
        print(format_ratios(cell.get("ratios") or {}, cell.get("ours", "workflow-aware")))
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
