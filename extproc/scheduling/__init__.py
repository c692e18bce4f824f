"""The scheduling framework (filters → scorers → picker, run from a configured profile) and its plugins."""

from extproc.scheduling.framework import (
    Filter,
    Picker,
    PostPick,
    Profile,
    Scheduler,
    SchedulingRequest,
    SchedulingResult,
    Scorer,
)
from extproc.scheduling.profiles import DEFAULT_CONFIG, build_scheduler, load_config, parse_weights
from extproc.scheduling.registry import PLUGINS, PluginContext

__all__ = [
    "DEFAULT_CONFIG",
    "PLUGINS",
    "Filter",
    "Picker",
    "PluginContext",
    "PostPick",
    "Profile",
    "Scheduler",
    "SchedulingRequest",
    "SchedulingResult",
    "Scorer",
    "build_scheduler",
    "load_config",
    "parse_weights",
]
