"""The benchmark matrix: its cells (shape x fleet size x KV x load x profile), how each axis is turned into a
plan and a fleet, the ratios against ours-with-metadata, and the wall-time estimate.

* **KV** per instance: ``fits`` = the plan's distinct tokens x 1.25 (every instance could hold the whole
  workload: no eviction needed, whatever the routing); ``pressure`` = the small default (``--num-gpu-blocks``
  default: 512 blocks, quick 128), raised only to 1.25 x the largest request so that every request fits
  (the Mooncake trace's prompts run to tens of thousands of tokens).
* **Load**: the plan's offered prefill demand (``workload.offered_prompt_tokens``: prompt tokens per
  simulated second, no cache hits counted) over the fleet's prefill capacity (instances x one full chunked-
  prefill step's tokens per second from the profile: ``max_num_batched_tokens / (step_base_s +
  prefill_per_token_s x max_num_batched_tokens)``). ``low`` scales the arrivals so that this utilisation is
  0.3, ``high`` 0.9: with no cache hit at all the fleet would be 90 % busy with prefill; a router reaching
  the workload's hit-rate ceiling cuts that by the ceiling (the "at ceiling" figure printed per cell). A
  number (``0.6``) is a target utilisation; ``as-is`` keeps the plan's own arrival rate (trace: speedup).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from benchmarks.simulator.profile import DEFAULT_PROFILE, Profile, load_profile
from benchmarks.workload import Plan, offered_prompt_tokens

__all__ = [
    "KV_LEVELS",
    "LOADS",
    "OURS",
    "Cell",
    "fleet_prefill_capacity",
    "kv_blocks",
    "parse_list",
    "prefill_capacity",
    "ratios",
    "scale_to_load",
    "summary_line",
]

OURS = "workflow-aware"  # ours with workflow metadata: every ratio is against it
KV_LEVELS = ("fits", "pressure")
LOADS: Mapping[str, float] = {"low": 0.3, "high": 0.9}  # target no-cache prefill utilisation
FITS_HEADROOM = 1.25


@dataclass(frozen=True)
class Cell:
    shape: str
    instances: int
    kv: str  # "fits", "pressure" or "<N> blocks" (an explicit --num-gpu-blocks)
    load: str  # "low", "high", a number or "as-is"
    profile: str

    def label(self) -> str:
        return f"{self.shape} | {self.instances} inst | KV {self.kv} | load {self.load} | {self.profile}"

    def as_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "instances": self.instances, "kv": self.kv, "load": self.load,
                "profile": self.profile}


def parse_list(spec: str, choices: tuple[str, ...] | None = None, name: str = "value") -> list[str]:
    """A comma list; ``all`` = every choice; duplicates dropped, order kept."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if choices is not None:
        out: list[str] = []
        for item in items:
            if item == "all":
                out += choices
            elif item in choices:
                out.append(item)
            else:
                raise SystemExit(f"unknown {name} {item!r}; choose from {', '.join(choices)} or all")
        items = out
    if not items:
        raise SystemExit(f"no {name} given")
    return list(dict.fromkeys(items))


def prefill_capacity(profile: Profile) -> float:
    """Prompt tokens per simulated second one instance computes with full chunked-prefill steps."""
    chunk = profile.max_num_batched_tokens
    return chunk / (profile.step_base_s + profile.prefill_per_token_s * chunk)


def fleet_prefill_capacity(profile_name: str | None, instances: int) -> float:
    return instances * prefill_capacity(load_profile(profile_name or DEFAULT_PROFILE))


def load_target(load: str) -> float | None:
    if load == "as-is":
        return None
    if load in LOADS:
        return LOADS[load]
    try:
        value = float(load)
    except ValueError:
        raise SystemExit(f"unknown load {load!r}: low, high, as-is or a utilisation such as 0.6") from None
    if not (value > 0 and math.isfinite(value)):
        raise SystemExit("a load must be > 0")
    return value


def scale_to_load(plan: Plan, load: str, capacity: float) -> tuple[Plan, dict[str, float]]:
    """The plan with its arrivals stretched or compressed to the load's utilisation, and its figures."""
    offered = offered_prompt_tokens(plan)
    utilisation = offered["tokens_per_s"] / capacity
    target = load_target(load)
    factor = 1.0
    if target is not None and math.isfinite(utilisation) and utilisation > 0:
        factor = utilisation / target
        plan = plan.scaled(factor)
        offered = offered_prompt_tokens(plan)
        utilisation = offered["tokens_per_s"] / capacity
    return plan, {"offered_prompt_tokens": offered["prompt_tokens"], "span_s": offered["span_s"],
                  "offered_prompt_tokens_per_s": offered["tokens_per_s"], "fleet_prefill_tokens_per_s": capacity,
                  "utilisation_no_cache": utilisation, "arrival_time_factor": factor}


def kv_blocks(level: str, distinct_tokens: int, largest_request: int, small_default: int,
              block_size: int = 16) -> int:
    """KV blocks per instance for a KV level (see the module docstring)."""
    fits_request = math.ceil(FITS_HEADROOM * largest_request / block_size)
    if level == "fits":
        return max(math.ceil(FITS_HEADROOM * distinct_tokens / block_size), fits_request, small_default)
    if level == "pressure":
        return max(small_default, fits_request)
    raise SystemExit(f"unknown KV level {level!r}; choose from {', '.join(KV_LEVELS)}")


def ratios(results: Mapping[str, Mapping[str, Any]], reference: str = OURS) -> dict[str, Any]:
    """Each contender's mean TTFT, mean workflow completion and engine TTFT over ours-with-metadata's
    (``reference``; >= 1: ours is faster), and ours against the best other contender on each."""
    ours = results.get(reference)
    if not ours or "error" in ours:
        return {}
    keys = {"ttft": "ttft_mean_ms", "workflow": "workflow_mean_s", "sim_ttft": "engine_ttft_mean_ms"}
    per: dict[str, dict[str, float]] = {}
    for name, row in results.items():
        if "error" in row:
            continue
        per[name] = {k: _ratio(row.get(key), ours.get(key)) for k, key in keys.items()}
    others = {n: r for n, r in results.items() if n != reference and "error" not in r}
    best: dict[str, Any] = {}
    for k, key in keys.items():
        candidates = [(r[key], n) for n, r in others.items() if _finite(r.get(key))]
        if candidates:
            value, name = min(candidates)
            best[k] = {"contender": name, "ratio": _ratio(value, ours.get(key))}
    ours_best = bool(best) and all(best[k]["ratio"] >= 1.0 for k in ("ttft", "workflow") if k in best)
    return {"per_contender": per, "best_other": best, "ours_best": ours_best}


def summary_line(cell: Cell, cell_ratios: Mapping[str, Any], utilisation: float, ceiling: float,
                 reference: str = OURS) -> str:
    best = cell_ratios.get("best_other") or {}
    if not best:
        return f"{cell.label():<62} no ratio ({reference} missing or failed)"
    parts = []
    for k, title in (("ttft", "TTFT"), ("workflow", "WF")):
        if k in best:
            parts.append(f"{title} best-other/ours {best[k]['ratio']:5.2f} ({best[k]['contender']})")
    verdict = "ours best" if cell_ratios.get("ours_best") else "ours NOT best"
    return f"{cell.label():<62} util {utilisation:4.2f} ceil {ceiling:5.1%}  " + "  ".join(parts) + f"  {verdict}"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _ratio(value: Any, ours: Any) -> float:
    if not (_finite(value) and _finite(ours)) or ours == 0:
        return math.nan
    return float(value) / float(ours)
