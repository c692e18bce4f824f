"""The scheduling framework: filters, then weighted scorers, then a picker, as a configured profile runs them.

Modelled on the Gateway API Inference Extension's endpoint picker (``pkg/epp/scheduling/framework``):

- a **filter** narrows the candidate instances (it may keep one: the workflow's warm instance);
- a **scorer** gives each remaining candidate a score in [0, 1]; the framework clamps it, multiplies it by the
  scorer's weight in the profile and sums;
- a **picker** chooses among the best sums (ties: rendezvous hash of the workflow, or rotation);
- a plugin may also implement :class:`PostPick` to learn from the choice (the prefix index does).

Plugins are pure and synchronous; they read the endpoints datastore and the plain :class:`SchedulingRequest`.
The framework times the plugin calls and records the scores it clamps of one run in ``TIMING_SAMPLE`` (``Stats``,
exported by the metrics collector), so a new scorer shows its cost and its distribution in /metrics without code
of its own. A run whose filters leave one candidate and that has no post-pick hook skips scoring and picking.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from extproc.datastore.endpoints import Endpoints

# Plugin calls take microseconds: the buckets resolve 0.5 µs .. 1 ms.
PLUGIN_SECONDS_BUCKETS = (5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3)
SCORE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# Weighted sums closer than this are a tie.
TIE_EPSILON = 1e-9
# One run of a profile in this many is measured (plugin times, score distributions): the histograms stay
# representative, the other runs pay nothing for them, and the measured runs (a few microseconds dearer) stay out
# of the decision time's 99th percentile.
TIMING_SAMPLE = 128


@dataclass(frozen=True, slots=True)
class SchedulingRequest:
    """The plain facts the plugins need about one request (no protobuf, no HTTP)."""

    workflow_id: str | None = None
    # The instance the workflow is assigned to, when that instance is healthy (None: new or failing over).
    home: str | None = None
    priority: float = 1.0
    # Chained hashes of the prompt's leading text blocks (the router's own prefix index).
    prompt_blocks: Sequence[int] = ()
    # Per instance, the share of the prompt an external KV index (LMCache) says it holds.
    cached_fraction: Mapping[str, float] | None = None
    # The prompt's length in tokens (exact from a tokenizer, else estimated) and, per instance, how many of its
    # leading tokens that instance holds (vLLM's KV events where configured, else the prefix index).
    prompt_tokens: int = 0
    cached_tokens: Mapping[str, int] | None = None
    # The request's `model` (a served model name or a LoRA adapter; None: the server's default model).
    model: str | None = None
    # Whether the prompt continues the workflow's last prompt (that prompt is its prefix) with the home still
    # holding all of that prompt's blocks per the prefix index: a conversation or tool loop going on where its
    # cache is. None: unknown (this replica has not seen the workflow's last prompt, or no prefix index).
    continues_on_home: bool | None = None


class Plugin(Protocol):
    name: str


@runtime_checkable
class Filter(Protocol):
    name: str

    def filter(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> list[str]:
        """The candidates to keep, in their given order. Must keep at least one when given at least one."""
        ...


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> dict[str, float]:
        """A score in [0, 1] per candidate (higher is better; missing candidates score 0)."""
        ...


@runtime_checkable
class Picker(Protocol):
    name: str

    def pick(self, request: SchedulingRequest, best: list[str]) -> str:
        """One of ``best`` (the candidates with the highest weighted sum, in instance order)."""
        ...


@runtime_checkable
class PostPick(Protocol):
    name: str

    def picked(self, request: SchedulingRequest, instance: str) -> None:
        """Called with the chosen instance (e.g. to remember what was sent where)."""
        ...


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    scorer: Scorer
    weight: float


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    filters: tuple[Filter, ...]
    scorers: tuple[WeightedScorer, ...]
    picker: Picker
    post_pick: tuple[PostPick, ...] = ()


@dataclass(frozen=True, slots=True)
class SchedulingResult:
    instance: str
    profile: str
    # Unweighted score of the chosen instance per scorer type (e.g. "prefix": the share of the prompt it holds).
    scores: Mapping[str, float] | None = None  # None: no scorer ran (the filters left one candidate)


class FastHistogram:
    """A Prometheus-style cumulative histogram whose observe is a bisect and two adds (prometheus_client's
    Histogram takes a lock per observation, too slow for several calls per request)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative ``(le, count)`` pairs, +Inf last."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class Stats:
    """Per-plugin call time and per-scorer score distributions, read by the metrics collector."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], FastHistogram] = {}  # (kind, plugin name)
        self.scores: dict[str, FastHistogram] = {}
        self.profiles: dict[str, int] = {}

    def timer(self, kind: str, name: str) -> FastHistogram:
        histogram = self.seconds.get((kind, name))
        if histogram is None:
            histogram = self.seconds[kind, name] = FastHistogram(PLUGIN_SECONDS_BUCKETS)
        return histogram

    def score_histogram(self, name: str) -> FastHistogram:
        histogram = self.scores.get(name)
        if histogram is None:
            histogram = self.scores[name] = FastHistogram(SCORE_BUCKETS)
        return histogram


class _Timed:
    """A profile with each plugin's histograms bound once, so a run does no dictionary lookups for them."""

    __slots__ = ("filters", "picker", "picker_seconds", "post_pick", "profile", "scorers")

    def __init__(self, profile: Profile, stats: Stats) -> None:
        self.profile = profile
        self.filters = [(f, stats.timer("filter", f.name)) for f in profile.filters]
        self.scorers = [(s.scorer, s.weight, stats.timer("scorer", s.scorer.name), stats.score_histogram(s.scorer.name),
                         getattr(s.scorer, "kind", s.scorer.name)) for s in profile.scorers]
        self.picker = profile.picker
        self.picker_seconds = stats.timer("picker", profile.picker.name)
        self.post_pick = [(p, stats.timer("post_pick", p.name)) for p in profile.post_pick]


def run_profile(timed: _Timed, request: SchedulingRequest, endpoints: Endpoints, stats: Stats) -> SchedulingResult:
    name = timed.profile.name
    runs = stats.profiles.get(name, 0)
    stats.profiles[name] = runs + 1
    if runs % TIMING_SAMPLE == 0:
        return _run_measured(timed, request, endpoints)
    candidates = endpoints.candidates()
    for plugin, _ in timed.filters:
        kept = plugin.filter(request, endpoints, candidates)
        if kept:  # a filter that empties the set is ignored rather than failing the request
            candidates = kept
    if len(candidates) == 1 and not timed.post_pick:
        return SchedulingResult(candidates[0], name)  # nothing left to score or pick
    totals = dict.fromkeys(candidates, 0.0)
    per_scorer: list[tuple[str, dict[str, float]]] = []
    for scorer, weight, _, _, kind in timed.scorers:
        scores = scorer.score(request, endpoints, candidates)
        clamped = {i: _clamp(scores.get(i, 0.0)) for i in candidates}
        for instance, value in clamped.items():
            totals[instance] += weight * value
        per_scorer.append((kind, clamped))
    instance = timed.picker.pick(request, _best(candidates, totals))
    for hook, _ in timed.post_pick:
        hook.picked(request, instance)
    return SchedulingResult(instance, name, {kind: scores[instance] for kind, scores in per_scorer})


def _run_measured(timed: _Timed, request: SchedulingRequest, endpoints: Endpoints) -> SchedulingResult:
    """The same run, timing every plugin call and recording every clamped score (one run in TIMING_SAMPLE)."""
    clock = time.perf_counter
    candidates = endpoints.candidates()
    for plugin, seconds in timed.filters:
        started = clock()
        kept = plugin.filter(request, endpoints, candidates)
        seconds.observe(clock() - started)
        if kept:
            candidates = kept
    totals = dict.fromkeys(candidates, 0.0)
    per_scorer: list[tuple[str, dict[str, float]]] = []
    for scorer, weight, seconds, distribution, kind in timed.scorers:
        started = clock()
        scores = scorer.score(request, endpoints, candidates)
        seconds.observe(clock() - started)
        clamped: dict[str, float] = {}
        for instance in candidates:
            value = clamped[instance] = _clamp(scores.get(instance, 0.0))
            distribution.observe(value)
            totals[instance] += weight * value
        per_scorer.append((kind, clamped))
    started = clock()
    instance = timed.picker.pick(request, _best(candidates, totals))
    timed.picker_seconds.observe(clock() - started)
    for hook, seconds in timed.post_pick:
        started = clock()
        hook.picked(request, instance)
        seconds.observe(clock() - started)
    return SchedulingResult(instance, timed.profile.name, {kind: scores[instance] for kind, scores in per_scorer})


def _clamp(value: float) -> float:
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value


def _best(candidates: list[str], totals: dict[str, float]) -> list[str]:
    """The candidates with the highest weighted sum, in instance order."""
    best: list[str] = []
    best_total = float("-inf")
    for instance in candidates:
        total = totals[instance]
        if total > best_total + TIE_EPSILON:
            best, best_total = [instance], total
        elif abs(total - best_total) <= TIE_EPSILON:
            best.append(instance)
    return best


class ProfileHandler(Protocol):
    def __call__(self, request: SchedulingRequest) -> str:
        """The name of the profile that schedules this request."""
        ...


class Scheduler:
    """Runs the profile the handler picks for each request."""

    def __init__(self, endpoints: Endpoints, profiles: Mapping[str, Profile], handler: ProfileHandler) -> None:
        self.endpoints = endpoints
        self.stats = Stats()
        self.profiles = dict(profiles)
        self._timed = {name: _Timed(profile, self.stats) for name, profile in profiles.items()}
        self.handler = handler

    def schedule(self, request: SchedulingRequest) -> SchedulingResult:
        return run_profile(self._timed[self.handler(request)], request, self.endpoints, self.stats)

    def plugins(self) -> list[Plugin]:
        """Every distinct plugin instance of every profile (for collectors and shutdown)."""
        seen: dict[int, Plugin] = {}
        for profile in self.profiles.values():
            plugins: list[Plugin] = [*profile.filters, *(s.scorer for s in profile.scorers), profile.picker,
                                     *profile.post_pick]
            for plugin in plugins:
                seen.setdefault(id(plugin), plugin)
        return list(seen.values())
