"""The scheduling framework: weighting and clamping, ignored empty filters, post-pick hooks, per-plugin metrics,
profiles from a config file and flags, and the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from extproc.config import Backend, Settings, settings_from_args
from extproc.datastore.endpoints import Endpoints
from extproc.datastore.prefix_index import PrefixIndex
from extproc.reporting import NullReporter
from extproc.scheduling import DEFAULT_CONFIG, PLUGINS, PluginContext, SchedulingRequest, build_scheduler
from extproc.scheduling.framework import FastHistogram, Profile, Scheduler, WeightedScorer
from extproc.scheduling.plugins.max_score import MaxScorePicker
from extproc.scheduling.profiles import parse_weights
from extproc.server import build_router

ABC = ["a", "b", "c"]


class Fixed:
    """A scorer that returns preset scores (out-of-range ones too, to check the clamp)."""

    def __init__(self, name: str, scores: dict[str, float]) -> None:
        self.name = name
        self.scores = scores

    def score(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> dict[str, float]:
        return self.scores


class DropAll:
    name = "drop-all"

    def filter(self, request: SchedulingRequest, endpoints: Endpoints, candidates: list[str]) -> list[str]:
        return []


class Remember:
    name = "remember"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def picked(self, request: SchedulingRequest, instance: str) -> None:
        self.seen.append(instance)


def scheduler(*scorers: WeightedScorer, filters: tuple[object, ...] = (), post: tuple[object, ...] = ()) -> Scheduler:
    profile = Profile("p", filters, scorers, MaxScorePicker(), post)  # type: ignore[arg-type]
    return Scheduler(Endpoints(ABC), {"p": profile}, lambda request: "p")


@pytest.mark.parametrize(("weights", "expected"), [
    ((1.0, 1.0), "b"),  # a: 1 + 0 = 1 (clamped from 5), b: 0.6 + 0.6 = 1.2
    ((3.0, 1.0), "a"),  # a: 3, b: 1.8 + 0.6 = 2.4
    ((0.0, 1.0), "b"),
])
def test_weighted_sum_of_clamped_scores(weights: tuple[float, float], expected: str) -> None:
    first = Fixed("first", {"a": 5.0, "b": 0.6, "c": -1.0})
    second = Fixed("second", {"b": 0.6})
    result = scheduler(WeightedScorer(first, weights[0]), WeightedScorer(second, weights[1])).schedule(
        SchedulingRequest("w"))
    assert result.instance == expected
    assert result.scores["first"] == {"a": 1.0, "b": 0.6, "c": 0.0}[expected]


def test_a_filter_that_empties_the_set_is_ignored_and_hooks_see_the_pick() -> None:
    hook = Remember()
    s = scheduler(WeightedScorer(Fixed("only-c", {"c": 1.0}), 1.0), filters=(DropAll(),), post=(hook,))
    assert s.schedule(SchedulingRequest()).instance == "c"
    assert hook.seen == ["c"]


def test_plugin_timing_and_score_distributions_reach_metrics() -> None:
    rules = build_router(Settings(backends=(Backend("a"), Backend("b")), scheduling_config="builtin:rules"),
                         NullReporter())
    rules.director.decide(None, 0.0, [1, 2, 3])  # prefix profile: load-bound, prefix, queue, kv-headroom
    text = generate_latest(rules.metrics.registry).decode()
    assert 'extproc_scheduler_plugin_duration_seconds_count{kind="scorer",plugin="prefix"} 1.0' in text
    assert 'extproc_scheduler_plugin_duration_seconds_count{kind="filter",plugin="load-bound"} 1.0' in text
    assert 'extproc_scheduler_scorer_score_count{scorer="queue"} 2.0' in text  # one per candidate
    assert 'extproc_scheduler_profile_runs_total{profile="prefix"} 1.0' in text
    default = build_router(Settings(backends=(Backend("a"), Backend("b")), scheduling_config="builtin:cost-model"),
                           NullReporter())
    default.director.decide(_wf("w"), 0.0, [1, 2, 3], prompt_tokens=48)
    text = generate_latest(default.metrics.registry).decode()
    assert 'extproc_scheduler_plugin_duration_seconds_count{kind="scorer",plugin="cost-model"} 1.0' in text
    assert 'extproc_scheduler_scorer_score_count{scorer="workflow-affinity"} 2.0' in text
    assert 'extproc_scheduler_profile_runs_total{profile="workflow"} 1.0' in text


def test_fast_histogram_is_cumulative() -> None:
    h = FastHistogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        h.observe(value)
    assert h.buckets() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert h.total == pytest.approx(2.65)


def test_profiles_from_a_config_file_with_named_plugins_and_parameters(tmp_path: Path) -> None:
    config = tmp_path / "scheduling.yaml"
    config.write_text("""
plugins:
  - {name: sticky, type: workflow-affinity, parameters: {batching_preference: 1.0}}
profiles:
  workflow: {filters: [sticky], scorers: [{plugin: sticky, weight: 1}], picker: max-score}
  prefix: {filters: [load-bound], scorers: [{plugin: queue, weight: 2}], picker: max-score}
  least-load: {filters: [least-load]}
""")
    settings = settings_from_args(["--backends", "a,b", "--scheduling-config", str(config),
                                   "--scorer-weights", "queue=5"])
    router = build_router(settings, NullReporter())
    profiles = router.director.scheduler.profiles
    # The fleet filters run in every profile: model first, lora-affinity after the workflow's own filter.
    assert [f.name for f in profiles["workflow"].filters] == ["model", "sticky", "lora-affinity"]
    assert profiles["prefix"].scorers[0].weight == 5.0
    first = router.director.decide(_wf("w"), 0.0)
    for _ in range(100):  # preference 1.0: never leaves its instance, whatever the load
        router.endpoints.acquire(first.instance)
    assert router.director.decide(_wf("w"), 1.0).instance == first.instance


def _wf(workflow_id: str):  # type: ignore[no-untyped-def]
    from extproc.metadata import WorkflowMetadata

    return WorkflowMetadata(workflow_id)


CONTEXT = PluginContext(0.8, PrefixIndex(ABC))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda c: c["profiles"].pop("prefix"), "profiles prefix missing"),
    (lambda c: c["profiles"].update(other={}), "unknown profiles other"),
    (lambda c: c["profiles"]["workflow"]["filters"].append("nope"), "unknown scheduling plugin type 'nope'"),
    (lambda c: c["profiles"]["workflow"]["filters"].append("queue"), "'queue' is not a filter"),
    (lambda c: c["profiles"]["prefix"]["scorers"].append({"plugin": "kv-room"}), "'kv-room' is not a scorer"),
    (lambda c: c["profiles"]["prefix"]["scorers"].append({"plugin": "queue", "weight": -1}), "weight must be"),
    (lambda c: c["profiles"]["prefix"].update(picker="queue"), "is not a picker"),
    (lambda c: c["plugins"].append({"type": "load-bound", "parameters": {"batching_preference": 2}}),
     "batching_preference must be"),
    (lambda c: c["plugins"].append({"type": "workflow-affinity", "parameters": {"always_pin": "yes"}}),
     "always_pin must be true or false"),
    (lambda c: c["plugins"].append({"type": "workflow-affinity", "parameters": {"weigh_queue": 1}}),
     "weigh_queue must be true or false"),
])
def test_bad_configs_are_refused_naming_the_problem(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    import copy

    config = copy.deepcopy(DEFAULT_CONFIG)
    mutate(config)
    with pytest.raises(ValueError, match=message):
        build_scheduler(Endpoints(ABC), CONTEXT, config)


def test_scorer_weight_flag_errors() -> None:
    assert parse_weights("prefix=3, queue=2.5,") == {"prefix": 3.0, "queue": 2.5}
    for bad in ("prefix", "prefix=x", "=1", "queue=-1"):
        with pytest.raises(ValueError, match="--scorer-weights"):
            parse_weights(bad)
    with pytest.raises(ValueError, match="no scorer named bogus"):
        build_scheduler(Endpoints(ABC), CONTEXT, weights={"bogus": 1.0})


def test_a_missing_or_malformed_config_file_is_a_clear_error(tmp_path: Path) -> None:
    from extproc.scheduling import load_config

    with pytest.raises(ValueError, match="--scheduling-config"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("[1, 2")
    with pytest.raises(ValueError, match="--scheduling-config"):
        load_config(bad)


def test_registry_holds_every_rule() -> None:
    assert {"workflow-affinity", "load-bound", "kv-room", "least-load", "prefix", "queue", "kv-headroom",
            "max-score", "cost-model"} <= set(PLUGINS)


def test_the_benchmarks_always_pin_config_is_the_rules_with_the_old_pin() -> None:
    from extproc.scheduling.plugins.workflow_affinity import WorkflowAffinity
    from extproc.scheduling.profiles import load_config

    path = Path(__file__).parents[2] / "benchmarks" / "compare_routers" / "always-pin.yaml"
    scheduler = build_scheduler(Endpoints(ABC), CONTEXT, load_config(path))
    pins = [f for f in scheduler.profiles["workflow"].filters if isinstance(f, WorkflowAffinity)]
    assert [p.always_pin for p in pins] == [True]
    request = SchedulingRequest("w", "b", cached_tokens={"a": 64, "b": 64, "c": 64}, continues_on_home=False)
    assert scheduler.schedule(request).instance == "b"


def test_the_benchmarks_queue_weighed_config_is_the_rules_with_the_queue_weighed() -> None:
    from extproc.scheduling.plugins.workflow_affinity import WorkflowAffinity
    from extproc.scheduling.profiles import load_config

    path = Path(__file__).parents[2] / "benchmarks" / "compare_routers" / "queue-weighed.yaml"
    scheduler = build_scheduler(Endpoints(ABC), CONTEXT, load_config(path))
    pins = [f for f in scheduler.profiles["workflow"].filters if isinstance(f, WorkflowAffinity)]
    assert [(p.always_pin, p.weigh_queue) for p in pins] == [(False, True)]
    default = build_scheduler(Endpoints(ABC), CONTEXT, load_config("builtin:rules"))
    assert [f.weigh_queue for f in default.profiles["workflow"].filters if isinstance(f, WorkflowAffinity)] == [False]


def test_gc_pauses_are_timed_by_generation_until_unwatched() -> None:
    import gc

    from extproc.metrics import Metrics

    metrics = Metrics(list(ABC))
    unwatch = metrics.watch_gc()
    try:
        gc.collect()  # a full collection: generation 2
        count = metrics.registry.get_sample_value("extproc_gc_pause_seconds_count", {"generation": "2"})
        assert count is not None and count >= 1
    finally:
        unwatch()
    callbacks = len(gc.callbacks)
    gc.collect()
    assert len(gc.callbacks) == callbacks
    assert metrics.registry.get_sample_value("extproc_gc_pause_seconds_count", {"generation": "2"}) == count


def test_gc_freeze_flag_and_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from_args(["--backends", "vllm-1=http://127.0.0.1:8001"]).gc_freeze is False
    assert settings_from_args(["--backends", "vllm-1=http://127.0.0.1:8001", "--gc-freeze"]).gc_freeze is True
    monkeypatch.setenv("EXTPROC_GC_FREEZE", "true")
    assert settings_from_args(["--backends", "vllm-1=http://127.0.0.1:8001"]).gc_freeze is True


def test_gc_threshold_and_response_observation_flags_and_their_environment_variables(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    backends = ["--backends", "vllm-1=http://127.0.0.1:8001"]
    default = settings_from_args(backends)
    assert (default.gc_threshold, default.response_observation) == (None, "observer-stream")
    assert settings_from_args([*backends, "--gc-threshold", "10000,10,10"]).gc_threshold == (10000, 10, 10)
    assert settings_from_args([*backends, "--response-observation", "access-log"]).response_observation == (
        "access-log")
    for bad in (["--gc-threshold", "10000,10"], ["--gc-threshold", "0,10,10"], ["--gc-threshold", "a,b,c"],
                ["--response-observation", "sometimes"]):
        with pytest.raises(SystemExit):
            settings_from_args([*backends, *bad])
        assert bad[0] in capsys.readouterr().err  # the error names the flag
    monkeypatch.setenv("EXTPROC_GC_THRESHOLD", "5000,20,20")
    monkeypatch.setenv("EXTPROC_RESPONSE_OBSERVATION", "access-log")
    found = settings_from_args(backends)
    assert (found.gc_threshold, found.response_observation) == ((5000, 20, 20), "access-log")
