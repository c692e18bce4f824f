"""The plugin registry: a type name → a factory of the plugin from its parameters.

Adding a plugin = one file under ``plugins/``, one line here, one table test. Factories receive the profile's
``parameters`` for the plugin plus the shared context (the router's prefix index, the batching preference).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from extproc.datastore.prefix_index import PrefixIndex
from extproc.scheduling.plugins.cost_model import CostModelScorer
from extproc.scheduling.plugins.kv_headroom import KVHeadroomScorer
from extproc.scheduling.plugins.kv_room import KVRoomFilter
from extproc.scheduling.plugins.least_load import LeastLoadFilter
from extproc.scheduling.plugins.load_bound import LoadBoundFilter
from extproc.scheduling.plugins.lora_affinity import DEFAULT_LOAD_COST, LoRAAffinityFilter
from extproc.scheduling.plugins.max_score import MaxScorePicker
from extproc.scheduling.plugins.model_filter import ModelFilter
from extproc.scheduling.plugins.prefix import PrefixScorer
from extproc.scheduling.plugins.queue import QueueScorer
from extproc.scheduling.plugins.workflow_affinity import WorkflowAffinity


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What the server gives every factory: shared state and the global knobs a parameter may override."""

    batching_preference: float
    prefix_index: PrefixIndex | None


def _preference(parameters: Mapping[str, Any], context: PluginContext) -> float:
    value = parameters.get("batching_preference", context.batching_preference)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"batching_preference must be a number within 0.0..1.0, got {value!r}")
    return float(value)


def _non_negative(parameters: Mapping[str, Any], name: str, default: float) -> float:
    value = parameters.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0.0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _flag(parameters: Mapping[str, Any], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


Factory = Callable[[Mapping[str, Any], PluginContext], object]

PLUGINS: dict[str, Factory] = {
    "workflow-affinity": lambda p, c: WorkflowAffinity(_preference(p, c), _flag(p, "always_pin", False),
                                                       _flag(p, "weigh_queue", False)),
    "load-bound": lambda p, c: LoadBoundFilter(_preference(p, c)),
    "kv-room": lambda p, c: KVRoomFilter(),
    "least-load": lambda p, c: LeastLoadFilter(),
    "prefix": lambda p, c: PrefixScorer(c.prefix_index),
    "queue": lambda p, c: QueueScorer(),
    "kv-headroom": lambda p, c: KVHeadroomScorer(),
    "max-score": lambda p, c: MaxScorePicker(),
    "cost-model": lambda p, c: CostModelScorer(_non_negative(p, "work_weight", 0.0)),
    "model": lambda p, c: ModelFilter(),
    "lora-affinity": lambda p, c: LoRAAffinityFilter(_non_negative(p, "load_cost", DEFAULT_LOAD_COST)),
}


def create(kind: str, parameters: Mapping[str, Any], context: PluginContext) -> object:
    factory = PLUGINS.get(kind)
    if factory is None:
        raise ValueError(f"unknown scheduling plugin type {kind!r} (known: {', '.join(sorted(PLUGINS))})")
    return factory(parameters, context)
