"""Models and LoRA adapters on a mixed fleet, without sockets: the ``model`` and ``lora-affinity`` filters
(table-driven), the director's 404 ``model_not_found`` / 400 / ``GET /v1/models`` answers, workflow affinity per
(workflow, model), and the endpoints datastore's membership updates.

The instance state is what the poller reads from vLLM: ``/v1/models`` cards (vllm/entrypoints/openai/models/
serving.py: served names with ``parent: null``, adapters with ``parent``) and ``vllm:lora_requests_info``
(vllm/v1/metrics/loggers.py: running/waiting adapter names, ``max_lora``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
import pytest

from extproc.config import Backend, Settings
from extproc.datastore.endpoints import Endpoints
from extproc.datastore.poller import BackendLoad, ModelCard, parse_lora_info
from extproc.errors import BadRequest, LocalAnswer, ModelNotFound
from extproc.metadata import WorkflowMetadata, parse_llm_body
from extproc.reporting import NullReporter
from extproc.requestcontrol.fleet import affinity_key, workflow_of
from extproc.requestcontrol.types import Request
from extproc.scheduling.framework import SchedulingRequest
from extproc.scheduling.plugins.lora_affinity import LoRAAffinityFilter
from extproc.scheduling.plugins.model_filter import ModelFilter
from extproc.server import Router, build_router

ABCD = ["a", "b", "c", "d"]


def serving(*models: str, adapters: tuple[str, ...] = (), running: tuple[str, ...] = (),
            waiting: tuple[str, ...] = (), max_lora: int = 0, **load: float) -> BackendLoad:
    cards = (*(ModelCard(m, "/models/" + m) for m in models),
             *(ModelCard(a, "/adapters/" + a, models[0]) for a in adapters))
    return BackendLoad(models=frozenset(c.id for c in cards), adapters=frozenset(adapters), cards=cards,
                       lora_running=frozenset(running), lora_waiting=frozenset(waiting), max_lora=max_lora,
                       **load)


def endpoints(loads: Mapping[str, BackendLoad], outstanding: Mapping[str, int] | None = None) -> Endpoints:
    e = Endpoints(ABCD)
    e.publish(dict(loads))
    for instance, count in (outstanding or {}).items():
        for _ in range(count):
            e.acquire(instance)
    return e


@dataclass
class Case:
    name: str
    model: str | None
    loads: dict[str, BackendLoad]
    expected: list[str]
    outstanding: dict[str, int] = field(default_factory=dict)


MIXED = {"a": serving("big"), "b": serving("big"), "c": serving("small"), "d": serving("small")}
MODEL_CASES = [
    Case("no model keeps all", None, MIXED, ABCD),
    Case("big", "big", MIXED, ["a", "b"]),
    Case("small", "small", MIXED, ["c", "d"]),
    Case("unknown lists may serve", "big", {"a": serving("big"), "c": serving("small")}, ["a", "b", "d"]),
    Case("an adapter is served where it is listed", "sql",
         {"a": serving("big"), "b": serving("big"), "c": serving("small", adapters=("sql",)),
          "d": serving("small")}, ["c"]),
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.name for c in MODEL_CASES])
def test_model_filter(case: Case) -> None:
    kept = ModelFilter().filter(SchedulingRequest(model=case.model), endpoints(case.loads), list(ABCD))
    assert kept == case.expected


def lora(*, running: tuple[str, ...] = (), waiting: tuple[str, ...] = (), slots: int = 2) -> BackendLoad:
    return serving("base", adapters=("sql", "chat", "review"), running=running, waiting=waiting, max_lora=slots)


LORA_CASES = [
    Case("base model: nothing to prefer", "base", {i: lora() for i in ABCD}, ABCD),
    Case("running wins", "sql", {"a": lora(), "b": lora(running=("sql",)), "c": lora(), "d": lora()}, ["b"]),
    Case("waiting counts as active", "sql", {"a": lora(waiting=("sql",)), "b": lora(), "c": lora(), "d": lora()},
         ["a"]),
    Case("no slot left: avoided while another has room", "sql",
         {"a": lora(running=("chat", "review")), "b": lora(running=("chat",)), "c": lora(running=("review", "chat")),
          "d": lora(running=("chat", "review"))}, ["b"]),
    Case("all full: the request waits somewhere rather than failing", "sql",
         {i: lora(running=("chat", "review")) for i in ABCD}, ABCD),
    Case("active but far busier: load it elsewhere", "sql",
         {"a": lora(running=("sql",)), "b": lora(), "c": lora(running=("chat", "review")),
          "d": lora(running=("chat", "review"))}, ["b"], outstanding={"a": 10}),
    Case("active and a little busier: stay", "sql",
         {"a": lora(running=("sql",)), "b": lora(), "c": lora(), "d": lora()}, ["a"], outstanding={"a": 3}),
]


@pytest.mark.parametrize("case", LORA_CASES, ids=[c.name for c in LORA_CASES])
def test_lora_affinity_filter(case: Case) -> None:
    e = endpoints(case.loads, case.outstanding)
    assert LoRAAffinityFilter(load_cost=4.0).filter(SchedulingRequest(model=case.model), e, list(ABCD)) == (
        case.expected)


def test_lora_info_takes_the_latest_series() -> None:
    text = "\n".join([
        "# TYPE vllm:lora_requests_info gauge",
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql",waiting_lora_adapters=""} 1.7e9',
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql,chat",waiting_lora_adapters="x"} 1.8e9',
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="",waiting_lora_adapters=""} 1.75e9',
    ])
    assert parse_lora_info(text) == (frozenset({"sql", "chat"}), frozenset({"x"}), 4)
    assert parse_lora_info("vllm:num_requests_running 1") is None


# --- the director ------------------------------------------------------------------------------------------
def router(loads: Mapping[str, BackendLoad]) -> Router:
    settings = Settings(backends=tuple(Backend(i) for i in ABCD), prefix_routing=False,
                        scheduling_config="builtin:rules")
    r = build_router(settings, NullReporter())
    r.endpoints.publish(dict(loads))
    return r


def request(path: str = "/v1/completions") -> Request:
    return Request(path=path, request_id="r", traceparent=None, header_metadata=None)


def test_unknown_model_is_a_404_naming_it() -> None:
    r = router(MIXED)
    with pytest.raises(ModelNotFound) as raised:
        r.director.parse(request(), b'{"model": "huge", "prompt": "x"}')
    error = orjson.loads(raised.value.to_json())["error"]
    assert raised.value.status == 404 and error["code"] == "model_not_found" and error["param"] == "model"
    assert "huge" in error["message"]
    assert r.director.parse(request(), b'{"model": "small", "prompt": "x"}').model == "small"
    assert r.director.parse(request(), b'{"prompt": "x"}').model is None  # vLLM's default model: any instance


def test_a_model_whose_instances_are_all_down_is_a_404() -> None:
    r = router(MIXED)
    r.endpoints.set_healthy("c", False)
    r.endpoints.set_healthy("d", False)
    with pytest.raises(ModelNotFound):
        r.director.parse(request(), b'{"model": "small", "prompt": "x"}')


@pytest.mark.parametrize("model", ["1", "null", "[\"big\"]", "{}", "true"])
def test_a_model_that_is_not_a_string_is_a_400_naming_the_field(model: str) -> None:
    body = f'{{"model": {model}, "prompt": "x"}}'.encode()
    if model == "null":  # JSON null: not sent, the server's default
        assert parse_llm_body(body, None, strip_metadata=True).model is None
        return
    with pytest.raises(BadRequest) as raised:
        parse_llm_body(body, None, strip_metadata=True)
    assert raised.value.status == 400 and raised.value.param == "model"


def test_get_models_answers_the_union() -> None:
    r = router({**MIXED, "d": serving("small", adapters=("sql",))})
    with pytest.raises(LocalAnswer) as raised:
        r.director.start({":path": "/v1/models", ":method": "GET"})
    answer = orjson.loads(raised.value.to_json())
    assert raised.value.status == 200 and answer["object"] == "list"
    cards = {card["id"]: card for card in answer["data"]}
    assert list(cards) == ["big", "small", "sql"]
    assert cards["sql"]["parent"] == "small" and cards["sql"]["root"] == "/adapters/sql"
    assert cards["big"]["parent"] is None


def test_get_models_is_forwarded_when_no_list_is_known() -> None:
    r = router({})
    assert r.director.start({":path": "/v1/models", ":method": "GET"}).path == "/v1/models"


def test_one_workflow_keeps_one_instance_per_model() -> None:
    r = router(MIXED)
    wf = WorkflowMetadata("wf-two-models", "agent")
    big = [r.director.decide(wf, float(t), model="big") for t in range(3)]
    small = [r.director.decide(wf, 3.0 + t, model="small") for t in range(3)]
    assert len({d.instance for d in big}) == 1 and big[0].instance in ("a", "b")
    assert len({d.instance for d in small}) == 1 and small[0].instance in ("c", "d")
    assert all(d.affinity_hit for d in big[1:] + small[1:])
    assert {d.workflow_id for d in big + small} == {"wf-two-models"}  # reported under the workflow itself
    assert big[0].affinity_key == affinity_key("wf-two-models", "big")
    assert workflow_of(big[0].affinity_key or "") == ("wf-two-models", "big")
    assert r.director.decide(wf, 10.0).affinity_key is None  # no model: the workflow's own entry


# --- membership ----------------------------------------------------------------------------------------------
def test_endpoints_update_adds_down_and_removes_at_once() -> None:
    e = Endpoints(["a", "b"])
    e.acquire("b")
    added, removed = e.update(["a", "c"])
    assert (added, removed) == (["c"], ["b"])
    assert e.candidates() == ["a"]  # c waits for its first good scrape
    e.set_healthy("c", True)
    e.set_healthy("b", True)  # a scrape of b that was under way: ignored
    assert e.candidates() == ["a", "c"]
    e.release("b")  # its request in flight still finishes
    assert e.outstanding["b"] == 0 and e.load("c") == 0
    with pytest.raises(ValueError):
        e.update([])


def test_router_state_follows_membership() -> None:
    r = router(MIXED)
    wf = WorkflowMetadata("wf-moves")
    home = r.director.decide(wf, 0.0, model="small").instance
    r.endpoints.update([i for i in ABCD if i != home] + ["e"], healthy=True)
    r.endpoints.publish({**MIXED, "e": serving("small")})
    moved = r.director.decide(wf, 1.0, model="small")
    assert moved.instance != home and moved.failover and moved.instance in ("c", "d", "e")
    for instance in ("e", "e", "e"):  # the new instance takes work at once: accounting knows it
        r.inflight.start(instance, 2.0)


def test_an_adapters_prefix_blocks_are_its_own() -> None:
    from extproc.requestcontrol.fleet import adapter_blocks

    e = endpoints({"a": serving("base", adapters=("sql",)), "b": serving("base")})
    blocks = [11, 22, 33]
    assert adapter_blocks(e, "base", blocks) == blocks  # a base model shares its cache across its names
    sql = adapter_blocks(e, "sql", blocks)
    assert len(sql) == 3 and not set(sql) & set(blocks)
    assert sql == adapter_blocks(e, "sql", blocks) and sql != adapter_blocks(endpoints(
        {"a": serving("base", adapters=("sql", "chat"))}), "chat", blocks)


def test_lora_affinity_as_a_scorer() -> None:
    plugin = LoRAAffinityFilter()
    e = endpoints({"a": lora(running=("sql",)), "b": lora(), "c": lora(running=("chat", "review")), "d": lora()})
    assert plugin.score(SchedulingRequest(model=None), e, list(ABCD)) == {}
    assert plugin.score(SchedulingRequest(model="base"), e, list(ABCD)) == {}
    # active 1, a free slot 0.5, every slot held by other adapters: missing (0)
    assert plugin.score(SchedulingRequest(model="sql"), e, list(ABCD)) == {"a": 1.0, "b": 0.5, "d": 0.5}
