"""Workflow identity from the keys clients already send (issue #17), through the parser, the precedence rule and
the director (no sockets): prompt_cache_key, the previous_response_id chain and its pinning, the session header,
the W3C trace id; the response-id map; Responses / Messages usage.

vLLM facts used here: a stored response lives in the memory of the process that produced it
(``OpenAIServingResponses.response_store`` in ``vllm/entrypoints/openai/responses/serving.py``; a foreign id gets
404 "Response with id '…' not found."); ``ResponsesResponse`` starts with ``id`` and the stream starts with the
``response.created`` event (``vllm/entrypoints/openai/responses/protocol.py``, ``api_router.py``);
``ResponseUsage.input_tokens_details.cached_tokens``; Anthropic ``cache_read_input_tokens`` (vLLM PR #40912)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from extproc.config import Backend, Settings, settings_from_args
from extproc.datastore.response_ids import ResponseIds, response_id_from_chunk
from extproc.errors import BadRequest, PreviousResponseUnavailable
from extproc.metadata import RoutingInput, WorkflowMetadata, messages_prompt_text, parse_llm_body, responses_prompt_text
from extproc.reporting import NullReporter
from extproc.requestcontrol.identity import IdentityConfig, IdentitySource, derived_id, resolve
from extproc.server import Router, build_router
from extproc.usage import extract_usage

INSTANCES = ("vllm-1", "vllm-2", "vllm-3", "vllm-4")
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ZERO_TRACE = "00-00000000000000000000000000000000-00f067aa0ba902b7-01"


def parse(body: dict[str, object], path: str = "/v1/responses",
          header: WorkflowMetadata | None = None) -> RoutingInput:
    return parse_llm_body(orjson.dumps(body), header, strip_metadata=True, path=path)


# --- precedence ---------------------------------------------------------------------------------------------
ALL_ON = IdentityConfig(trace_id=True)
BODY = WorkflowMetadata("wf-body")
HEADER = WorkflowMetadata("wf-header")


@pytest.mark.parametrize(
    ("config", "metadata", "from_body", "key", "chain", "session", "trace", "want_id", "want_source"),
    [
        (ALL_ON, BODY, True, "k", "resp:r1", "s", TRACE, "wf-body", IdentitySource.WORKFLOW_METADATA),
        (ALL_ON, None, True, "k", "resp:r1", "s", TRACE, None, IdentitySource.NONE),  # workflow_id: null
        (ALL_ON, HEADER, False, "k", "resp:r1", "s", TRACE, "wf-header", IdentitySource.WORKFLOW_HEADER),
        (ALL_ON, None, False, "k", "resp:r1", "s", TRACE, "pck:k", IdentitySource.PROMPT_CACHE_KEY),
        (ALL_ON, None, False, None, "resp:r1", "s", TRACE, "resp:r1", IdentitySource.PREVIOUS_RESPONSE),
        (ALL_ON, None, False, None, None, "s", TRACE, "session:s", IdentitySource.SESSION_HEADER),
        (ALL_ON, None, False, None, None, None, TRACE, "trace:4bf92f3577b34da6a3ce929d0e0e4736",
         IdentitySource.TRACE_ID),
        (ALL_ON, None, False, None, None, None, ZERO_TRACE, None, IdentitySource.NONE),  # invalid per W3C
        (ALL_ON, None, False, None, None, "  ", None, None, IdentitySource.NONE),
        (IdentityConfig(), None, False, None, None, None, TRACE, None, IdentitySource.NONE),  # trace id: opt-in
        (IdentityConfig(workflow_header=False), HEADER, False, "k", None, None, None, "pck:k",
         IdentitySource.PROMPT_CACHE_KEY),
        (IdentityConfig(prompt_cache_key=False), None, False, "k", "resp:r1", None, None, "resp:r1",
         IdentitySource.PREVIOUS_RESPONSE),
        (IdentityConfig(previous_response=False), None, False, None, "resp:r1", "s", None, "session:s",
         IdentitySource.SESSION_HEADER),
        (IdentityConfig(session_header=None), None, False, None, None, "s", None, None, IdentitySource.NONE),
    ],
)
def test_precedence(config: IdentityConfig, metadata: WorkflowMetadata | None, from_body: bool, key: str | None,
                    chain: str | None, session: str | None, trace: str | None, want_id: str | None,
                    want_source: IdentitySource) -> None:
    found, source = resolve(config, metadata, from_body, key, chain, session, trace)
    assert (found.workflow_id if found is not None else None) == want_id
    assert source is want_source


def test_derived_ids_are_valid_a2a_ids() -> None:
    assert derived_id("pck", "conv-42") == "pck:conv-42"
    hashed = derived_id("pck", "user 7/conversation é")
    assert hashed.startswith("pck:h") and len(hashed) == len("pck:h") + 32
    assert derived_id("pck", "user 7/conversation é") == hashed  # stable across replicas
    assert derived_id("session", "x" * 256).startswith("session:h")  # too long once prefixed


# --- parsing ------------------------------------------------------------------------------------------------
def test_responses_body_is_parsed_once_for_routing() -> None:
    routing = parse({"model": "m", "instructions": "be brief", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
        {"type": "function_call_output", "call_id": "c1", "output": "42"}],
        "previous_response_id": "resp_abc", "prompt_cache_key": "conv-1", "store": False, "stream": True,
        "max_output_tokens": 64})
    assert routing.previous_response_id == "resp_abc" and routing.prompt_cache_key == "conv-1"
    assert routing.store is False and routing.stream and routing.max_tokens == 64
    assert routing.prompt_text == "system\nbe brief\nuser\nhello\n42"
    assert parse({"input": "hi"}).store is True  # vLLM's default (ResponsesRequest.store = True)
    assert responses_prompt_text({"input": "hi"}) == "user\nhi"


def test_chat_reads_prompt_cache_key_but_not_previous_response_id() -> None:
    routing = parse({"messages": [{"role": "user", "content": "x"}], "prompt_cache_key": "k",
                     "previous_response_id": "resp_1"}, path="/v1/chat/completions")
    assert routing.prompt_cache_key == "k" and routing.previous_response_id is None


def test_messages_prompt_text() -> None:
    body = {"system": [{"type": "text", "text": "sys"}], "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]}
    assert messages_prompt_text(body) == "system\nsys\nuser\nq"
    assert parse(body, path="/v1/messages").max_tokens == 8


@pytest.mark.parametrize("field", ["previous_response_id", "prompt_cache_key"])
@pytest.mark.parametrize(("value", "code"), [(7, "invalid_type"), ({"a": 1}, "invalid_type"),
                                             ("r" * 257, "too_long")])
def test_bad_keys_are_400_naming_the_field(field: str, value: object, code: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse({"input": "x", field: value})
    assert caught.value.status == 400 and caught.value.param == field and caught.value.code == code
    assert orjson.loads(caught.value.to_json())["error"]["param"] == field


def test_null_or_empty_keys_are_absent() -> None:
    routing = parse({"input": "x", "previous_response_id": None, "prompt_cache_key": ""})
    assert routing.previous_response_id is None and routing.prompt_cache_key is None


# --- the response-id map ------------------------------------------------------------------------------------
def test_response_id_from_json_body_and_stream_first_event() -> None:
    body = orjson.dumps({"id": "resp_1", "created_at": 1, "output": [{"id": "msg_9"}]})
    assert response_id_from_chunk(body) == "resp_1"
    created = {"response": {"id": "resp_2", "instructions": "x" * 5000}, "sequence_number": 0,
               "type": "response.created"}
    event = b"event: response.created\ndata: " + orjson.dumps(created) + b"\n\n"
    assert response_id_from_chunk(event) == "resp_2"  # the type comes after 5 KB of echoed instructions
    assert response_id_from_chunk(b"event: response.output_text.delta\ndata: {\"item_id\": \"msg_1\"}") is None
    assert response_id_from_chunk(b"data: {\"id\": \"chatcmpl-1\"}") is None
    assert response_id_from_chunk(b'{"error": {"message": "x"}}') is None


def test_response_ids_are_bounded_and_expire() -> None:
    ids = ResponseIds(ttl=10.0, max_entries=3)
    for i in range(5):
        ids.learn(f"resp_{i}", "vllm-1", "wf", float(i))
    assert len(ids) == 3 and ids.evicted == 2 and ids.get("resp_0", 5.0) is None
    entry = ids.get("resp_4", 5.0)
    assert entry is not None and entry.instance == "vllm-1"
    assert ids.get("resp_2", 30.0) is None  # idle for longer than the TTL
    assert len(ids) <= 2


# --- through the director -----------------------------------------------------------------------------------
def router(**settings: object) -> Router:
    return build_router(Settings(backends=tuple(Backend(i) for i in INSTANCES), prefix_routing=False,
                                 **settings), NullReporter())  # type: ignore[arg-type]


def send(r: Router, body: dict[str, object], path: str = "/v1/responses",
         headers: dict[str, str] | None = None) -> str:
    """Route one request; returns the instance."""
    director = r.director
    request = director.start({":path": path, **(headers or {})})
    plan = asyncio.run(director.route(request, director.parse(request, orjson.dumps(body)), 0.0))
    return plan.instance


def answer(r: Router, instance: str, response_id: str, workflow_id: str | None, stream: bool = False) -> None:
    """The observer sees the response of a routed request (first chunk, then the end)."""
    director = r.director
    headers = {"x-upstream-cluster": instance, ":path": "/v1/responses"}
    if workflow_id is not None:
        headers["x-workflow-id"] = workflow_id
    response = director.observed(headers)
    response.status = 200
    if stream:
        first = b"event: response.created\ndata: " + orjson.dumps({"response": {"id": response_id}}) + b"\n\n"
    else:
        first = orjson.dumps({"id": response_id, "object": "response", "usage": {
            "input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 2}})
    director.response_started(response, first)
    director.completed(response, first)


def test_chained_follow_ups_are_pinned_whatever_the_load() -> None:
    r = router()
    first = send(r, {"input": "hi"})
    answer(r, first, "resp_a", None, stream=True)
    for instance in INSTANCES:  # make the holder by far the busiest
        if instance == first:
            for _ in range(50):
                r.endpoints.acquire(instance)
    second = send(r, {"input": "more", "previous_response_id": "resp_a"})
    assert second == first
    entry = r.workflows.peek("resp:resp_a")
    assert entry is not None and entry.instance == first  # the chain is one workflow
    answer(r, second, "resp_b", "resp:resp_a")
    assert send(r, {"input": "again", "previous_response_id": "resp_b"}) == first
    assert r.director.response_ids.pinned == 2


def test_unknown_previous_response_is_routed_by_the_other_sources() -> None:
    r = router()
    instance = send(r, {"input": "x", "previous_response_id": "resp_never_seen", "prompt_cache_key": "k1"})
    assert r.workflows.peek("pck:k1") is not None and r.workflows.peek("pck:k1").instance == instance  # type: ignore[union-attr]
    assert r.director.response_ids.unknown == 1


def test_previous_response_on_a_gone_or_down_instance_is_a_clear_error() -> None:
    r = router()
    r.director.response_ids.learn("resp_gone", "vllm-9", "resp:resp_gone", r.director.clock())  # removed from the fleet
    with pytest.raises(PreviousResponseUnavailable) as caught:
        send(r, {"input": "x", "previous_response_id": "resp_gone"})
    assert caught.value.status == 404 and caught.value.param == "previous_response_id"
    assert "vllm-9" in caught.value.message and "full input" in caught.value.message
    r.director.response_ids.learn("resp_down", "vllm-2", "resp:resp_down", r.director.clock())
    r.endpoints.set_healthy("vllm-2", False)
    with pytest.raises(PreviousResponseUnavailable) as caught:
        send(r, {"input": "x", "previous_response_id": "resp_down"})
    assert caught.value.status == 404 and caught.value.code == "previous_response_unavailable"


def test_prompt_cache_key_keeps_a_conversation_on_one_instance() -> None:
    r = router()
    homes = {}
    for turn in range(5):
        for conversation in range(8):
            body = {"messages": [{"role": "user", "content": f"c{conversation} t{turn}"}],
                    "prompt_cache_key": f"conv-{conversation}"}
            instance = send(r, body, path="/v1/chat/completions")
            assert homes.setdefault(conversation, instance) == instance
    assert len(set(homes.values())) > 1  # conversations spread


def test_session_header_and_trace_id_sources() -> None:
    r = router(identity_trace_id=True)
    a = send(r, {"messages": [{"role": "user", "content": "x"}]}, "/v1/chat/completions", {"x-session-id": "s1"})
    assert r.workflows.peek("session:s1") is not None and r.workflows.peek("session:s1").instance == a  # type: ignore[union-attr]
    send(r, {"input": "x"}, headers={"traceparent": TRACE})
    assert r.workflows.peek("trace:4bf92f3577b34da6a3ce929d0e0e4736") is not None
    before = len(r.workflows)
    send(r, {"input": "x"}, headers={"traceparent": ZERO_TRACE})
    assert len(r.workflows) == before  # all-zero trace id: ignored


def test_identity_source_is_counted_in_metrics() -> None:
    r = router()
    send(r, {"input": "x", "prompt_cache_key": "k"})
    send(r, {"input": "x"})
    registry = r.metrics.registry
    assert registry.get_sample_value("extproc_identity_source_total", {"source": "prompt_cache_key"}) == 1.0
    assert registry.get_sample_value("extproc_identity_source_total", {"source": "none"}) == 1.0


def test_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTPROC_IDENTITY_TRACE_ID", "true")
    monkeypatch.setenv("EXTPROC_IDENTITY_SESSION_HEADER", "X-Conversation")
    settings = settings_from_args(["--identity-prompt-cache-key", "false", "--max-response-ids", "10"])
    assert settings.identity_trace_id and settings.identity_session_header == "x-conversation"
    assert not settings.identity_prompt_cache_key and settings.max_response_ids == 10
    assert settings_from_args(["--identity-session-header", ""]).identity_session_header == ""


# --- usage --------------------------------------------------------------------------------------------------
def test_usage_of_responses_and_messages() -> None:
    responses = orjson.dumps({"usage": {"input_tokens": 100, "input_tokens_details": {
        "cached_tokens": 64, "input_tokens_per_turn": [], "cached_tokens_per_turn": []},
        "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 105}})
    used = extract_usage(responses)
    assert used is not None and (used.prompt_tokens, used.completion_tokens, used.cached_tokens) == (100, 5, 64)
    completed = b"event: response.completed\ndata: " + orjson.dumps({"response": {"id": "resp_1", "usage": {
        "input_tokens": 50, "input_tokens_details": {"cached_tokens": 32}, "output_tokens": 3}}}) + b"\n\n"
    used = extract_usage(completed)
    assert used is not None and (used.prompt_tokens, used.cached_tokens) == (50, 32)
    # Anthropic: input_tokens exclude the cache reads (vLLM PR #40912)
    delta = b'event: message_delta\ndata: {"type":"message_delta","usage":{"input_tokens":36,"output_tokens":4,' \
            b'"cache_read_input_tokens":64,"cache_creation_input_tokens":0}}\n\n'
    used = extract_usage(delta)
    assert used is not None and (used.prompt_tokens, used.completion_tokens, used.cached_tokens) == (100, 4, 64)
    older = orjson.dumps({"usage": {"input_tokens": 100, "output_tokens": 4, "cache_read_input_tokens": None}})
    used = extract_usage(older)
    assert used is not None and (used.prompt_tokens, used.cached_tokens) == (100, 0)


def test_stored_responses_are_known_before_they_run() -> None:
    """The router names the request id (vLLM's response id) of a stored response and maps it at routing time:
    a follow-up that arrives before the observer saw the response is pinned all the same."""
    r = router()
    director = r.director
    request = director.start({":path": "/v1/responses"})
    plan = asyncio.run(director.route(request, director.parse(request, b'{"input": "x"}'), 0.0))
    assert plan.body is not None
    response_id = orjson.loads(plan.body)["request_id"]
    assert response_id.startswith("resp_") and orjson.loads(plan.body)["input"] == "x"
    for _ in range(20):
        r.endpoints.acquire(plan.instance)
    assert send(r, {"input": "y", "previous_response_id": response_id}) == plan.instance
    follow = director.start({":path": "/v1/responses"})
    pinned = asyncio.run(director.route(follow, director.parse(
        follow, orjson.dumps({"input": "y", "previous_response_id": response_id})), 0.0))
    assert ("x-envoy-max-retries", "0") in pinned.headers  # a retry elsewhere could only meet a 404
    own = director.start({":path": "/v1/responses"})
    kept = asyncio.run(director.route(own, director.parse(own, b'{"input": "x", "request_id": "resp_mine"}'), 0.0))
    assert kept.body is None and send(r, {"input": "z", "previous_response_id": "resp_mine"}) == kept.instance
    unstored = director.start({":path": "/v1/responses"})
    plain = asyncio.run(director.route(unstored, director.parse(unstored, b'{"input": "x", "store": false}'), 0.0))
    assert plain.body is None


def test_a_tail_is_taken_for_a_whole_response_only() -> None:
    from extproc.datastore.response_ids import whole_response

    assert whole_response(orjson.dumps({"id": "resp_1", "created_at": 1, "object": "response", "output": []}))
    item = orjson.dumps({"id": "msg_1", "content": [], "role": "assistant", "type": "message"})
    assert not whole_response(item + b'], "usage": {}}')  # the end of a longer body, at an output item
