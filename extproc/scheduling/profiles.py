"""Scheduling profiles: which plugins run, in which order, with which weights — from a config file and flags.

A config (YAML or JSON; ``--scheduling-config``) has the shape::

    plugins:                      # optional: named plugins with parameters; a name used below without an
      - name: sticky              # entry here is a plugin type with default parameters
        type: workflow-affinity
        parameters: {batching_preference: 0.9}
    profiles:
      workflow:   {filters: [sticky, kv-room, least-load], scorers: [{plugin: sticky, weight: 1}], picker: max-score}
      prefix:     {filters: [load-bound], scorers: [{plugin: prefix, weight: 3}, ...], picker: max-score}
      least-load: {filters: [kv-room, least-load], picker: max-score}

Every profile named in :data:`PROFILE_NAMES` must be present; the handler picks ``workflow`` for requests with
workflow affinity, ``prefix`` for the others when there is prefix information (the router's index or an external
KV index), else ``least-load``. A plugin name used in several places is one instance (one prefix index, one
rotation). ``--scorer-weights prefix=3,queue=2`` overrides weights in every profile that uses those scorers.
:data:`DEFAULT_CONFIG` is :data:`RULES_CONFIG` (``builtin:rules``), the router's documented rules;
:data:`COST_MODEL_CONFIG` (``builtin:cost-model``) schedules by expected time to first token.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from extproc.datastore.endpoints import Endpoints
from extproc.scheduling.framework import (
    Filter,
    Picker,
    PostPick,
    Profile,
    Scheduler,
    SchedulingRequest,
    Scorer,
    WeightedScorer,
)
from extproc.scheduling.registry import PluginContext, create

PROFILE_NAMES = ("workflow", "prefix", "least-load")

# ``builtin:cost-model``: every request is scheduled by its expected time to first token on each instance
# (uncached prefill against queued work, costs learned from the instances' metrics); a workflow's own instance
# wins unless another is more than ~10 % cheaper (its context stays in one place instead of being copied around
# the fleet). Opt-in until the router comparison shows it never worse than the rules (docs/architecture.md).
COST_MODEL_CONFIG: dict[str, Any] = {
    "plugins": [],
    "profiles": {
        "workflow": {
            "filters": ["kv-room"],
            "scorers": [{"plugin": "cost-model", "weight": 1.0}, {"plugin": "workflow-affinity", "weight": 0.1}],
            "picker": "max-score",
        },
        "prefix": {"filters": ["kv-room"], "scorers": [{"plugin": "cost-model", "weight": 1.0}],
                   "picker": "max-score"},
        "least-load": {"filters": ["kv-room"], "scorers": [{"plugin": "cost-model", "weight": 1.0}],
                       "picker": "max-score"},
    },
}

# The default (``builtin:rules``): sticky within a load bound, least-loaded placement, GIE-style weighted scorers
# without metadata.
RULES_CONFIG: dict[str, Any] = {
    "plugins": [],
    "profiles": {
        "workflow": {
            "filters": ["workflow-affinity", "kv-room", "least-load"],
            "scorers": [{"plugin": "workflow-affinity", "weight": 1.0}],
            "picker": "max-score",
        },
        "prefix": {
            "filters": ["load-bound"],
            "scorers": [{"plugin": "prefix", "weight": 3.0}, {"plugin": "queue", "weight": 2.0},
                        {"plugin": "kv-headroom", "weight": 2.0}],
            "picker": "max-score",
        },
        "least-load": {"filters": ["kv-room", "least-load"], "scorers": [], "picker": "max-score"},
    },
}

DEFAULT_CONFIG = RULES_CONFIG
BUILTIN_CONFIGS = {"rules": RULES_CONFIG, "cost-model": COST_MODEL_CONFIG}
BUILTIN_PREFIX = "builtin:"


def load_config(path: str | Path) -> dict[str, Any]:
    """A built-in config (``builtin:cost-model``, ``builtin:rules``) or a config file (YAML, of which JSON is a
    subset); ValueError naming the problem."""
    if isinstance(path, str) and path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_CONFIGS:
            raise ValueError(f"--scheduling-config {path}: no such built-in (known: "
                             f"{', '.join(BUILTIN_PREFIX + n for n in BUILTIN_CONFIGS)})")
        return BUILTIN_CONFIGS[name]
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"--scheduling-config {path}: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--scheduling-config {path}: expected a mapping with 'profiles'")
    return data


def parse_weights(spec: str) -> dict[str, float]:
    """``name=weight,...`` (``--scorer-weights``)."""
    weights: dict[str, float] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not name.strip() or not weight >= 0.0:
            raise ValueError(f"--scorer-weights: expected name=weight with weight >= 0, got {item!r}")
        weights[name.strip()] = weight
    return weights


def default_handler(request: SchedulingRequest) -> str:
    if request.workflow_id is not None:
        return "workflow"
    if request.cached_fraction or request.prompt_blocks:
        return "prefix"
    return "least-load"


def _expect(value: object, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"scheduling config: {where} must be a {kind.__name__}, got {type(value).__name__}")
    return value


class _Plugins:
    """Instantiates each named plugin once."""

    def __init__(self, declared: list[Any], context: PluginContext) -> None:
        self.context = context
        self.specs: dict[str, tuple[str, Mapping[str, Any]]] = {}
        for index, entry in enumerate(declared):
            where = f"plugins[{index}]"
            _expect(entry, dict, where)
            kind = _expect(entry.get("type"), str, f"{where}.type")
            name = _expect(entry.get("name", kind), str, f"{where}.name")
            parameters = _expect(entry.get("parameters", {}), dict, f"{where}.parameters")
            self.specs[name] = (kind, parameters)
        self.instances: dict[str, object] = {}
        for index, name in enumerate(self.specs):  # a declared plugin is checked even if no profile uses it
            self.get(name, f"plugins[{index}]")

    def get(self, value: object, where: str) -> object:
        name: str = _expect(value, str, where)
        plugin = self.instances.get(name)
        if plugin is None:
            kind, parameters = self.specs.get(name, (name, {}))
            try:
                plugin = create(kind, parameters, self.context)
            except ValueError as error:
                raise ValueError(f"scheduling config: {where}: {error}") from None
            # Every plugin class declares str `name` (its type name); a configured name labels its metrics.
            plugin.name = name  # type: ignore[attr-defined]
            plugin.kind = kind  # type: ignore[attr-defined]
            self.instances[name] = plugin
        return plugin


def _profile(name: str, value: object, plugins: _Plugins, weights: Mapping[str, float]) -> Profile:
    where = f"profiles.{name}"
    spec: dict[str, Any] = _expect(value, dict, where)
    filters: list[Filter] = []
    for i, item in enumerate(_expect(spec.get("filters", []), list, f"{where}.filters")):
        plugin = plugins.get(item, f"{where}.filters[{i}]")
        if not isinstance(plugin, Filter):
            raise ValueError(f"scheduling config: {where}.filters[{i}]: {item!r} is not a filter")
        filters.append(plugin)
    scorers: list[WeightedScorer] = []
    for i, item in enumerate(_expect(spec.get("scorers", []), list, f"{where}.scorers")):
        entry = _expect(item, dict, f"{where}.scorers[{i}]")
        plugin = plugins.get(entry.get("plugin"), f"{where}.scorers[{i}].plugin")
        if not isinstance(plugin, Scorer):
            raise ValueError(f"scheduling config: {where}.scorers[{i}]: {entry.get('plugin')!r} is not a scorer")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
            raise ValueError(f"scheduling config: {where}.scorers[{i}].weight must be a number >= 0")
        scorers.append(WeightedScorer(plugin, float(weights.get(plugin.name, weight))))
    picker = plugins.get(spec.get("picker", "max-score"), f"{where}.picker")
    if not isinstance(picker, Picker):
        raise ValueError(f"scheduling config: {where}.picker: {spec.get('picker')!r} is not a picker")
    hooks: dict[int, PostPick] = {}
    for plugin in (*filters, *(s.scorer for s in scorers), picker):
        if isinstance(plugin, PostPick):
            hooks.setdefault(id(plugin), plugin)
    return Profile(name, tuple(filters), tuple(scorers), picker, tuple(hooks.values()))


# Filters every profile runs, whether or not its configuration names them: ``model`` first (an instance that does
# not serve the request's model answers 404), ``lora-affinity`` after ``workflow-affinity`` (a workflow's own
# instance keeps its adapter; otherwise adapter slots decide), else right after ``model``.
FLEET_FILTERS = ("model", "lora-affinity")


def _with_fleet_filters(profile: Profile, plugins: _Plugins) -> Profile:
    kinds = [getattr(f, "kind", f.name) for f in profile.filters]
    filters = list(profile.filters)
    if "model" not in kinds:
        filters.insert(0, _filter(plugins, "model", profile.name))
        kinds.insert(0, "model")
    if "lora-affinity" not in kinds:
        after = kinds.index("workflow-affinity") if "workflow-affinity" in kinds else kinds.index("model")
        filters.insert(after + 1, _filter(plugins, "lora-affinity", profile.name))
    return dataclasses.replace(profile, filters=tuple(filters))


def _filter(plugins: _Plugins, kind: str, profile: str) -> Filter:
    plugin = plugins.get(kind, f"profiles.{profile}.filters")
    if not isinstance(plugin, Filter):
        raise ValueError(f"scheduling config: plugin {kind!r} is not a filter")
    return plugin


def build_scheduler(endpoints: Endpoints, context: PluginContext, config: Mapping[str, Any] | None = None,
                    weights: Mapping[str, float] | None = None) -> Scheduler:
    config = DEFAULT_CONFIG if config is None else config
    plugins = _Plugins(_expect(config.get("plugins", []), list, "plugins"), context)
    profiles_spec = _expect(config.get("profiles"), dict, "profiles")
    missing = [name for name in PROFILE_NAMES if name not in profiles_spec]
    if missing:
        raise ValueError(f"scheduling config: profiles {', '.join(missing)} missing (needed: "
                         f"{', '.join(PROFILE_NAMES)})")
    unknown = sorted(set(profiles_spec) - set(PROFILE_NAMES))
    if unknown:
        raise ValueError(f"scheduling config: unknown profiles {', '.join(unknown)} "
                         f"(known: {', '.join(PROFILE_NAMES)})")
    weights = weights or {}
    profiles = {name: _with_fleet_filters(_profile(name, profiles_spec[name], plugins, weights), plugins)
                for name in PROFILE_NAMES}
    known = {s.scorer.name for p in profiles.values() for s in p.scorers}
    stray = sorted(set(weights) - known)
    if stray:
        raise ValueError(f"--scorer-weights: no scorer named {', '.join(stray)} (scorers: {', '.join(sorted(known))})")
    return Scheduler(endpoints, profiles, default_handler)


def dump_default_config() -> str:
    return json.dumps(DEFAULT_CONFIG, indent=2)
