"""The Responses API (``POST /v1/responses``) and the Anthropic-compatible Messages API (``POST /v1/messages``) of
one simulated vLLM server, as vLLM implements them.

Responses (``vllm/entrypoints/openai/responses/serving.py``, ``protocol.py``, ``utils.py``, ``api_router.py``):

- ``store`` defaults to true; a stored response stays in the memory of this process (``response_store``, a dict
  vLLM never prunes) with the chat messages it was built from (``msg_store``). vLLM stores only with
  ``VLLM_ENABLE_RESPONSES_API_STORE=1`` and otherwise silently ignores ``store``; the simulator plays a fleet
  started with it (set ``VLLM_ENABLE_RESPONSES_API_STORE=0`` for the other behaviour).
- ``previous_response_id`` not in this process's store → 404 ``{"error": {"message": "Response with id '<id>'
  not found.", "type": "invalid_request_error", "param": "response_id", "code": 404}}`` (``_make_not_found_error``).
- The prompt: ``instructions`` as the system message, the previous request's messages without their system
  messages, the previous response's output text as assistant messages, then ``input`` (a string is one user
  message) (``construct_input_messages``).
- The response: ``ResponsesResponse.from_request`` (``id`` first, the request's ``request_id``, an extra field
  that defaults to ``resp_<uuid>``; ``status`` ``incomplete`` with ``incomplete_details.reason``
  ``max_output_tokens`` when generation stopped at the token bound: here when the client set
  ``max_output_tokens``; without one the simulated answer's default length stands for a natural stop,
  ``completed``); usage ``{input_tokens, input_tokens_details: {cached_tokens}, output_tokens,
  output_tokens_details: {reasoning_tokens}, total_tokens}``.
- A stream (``event: <type>\\ndata: <json>\\n\\n``): ``response.created`` and ``response.in_progress`` at once, then
  ``response.output_item.added``, ``response.content_part.added``, ``response.output_text.delta`` per engine
  output, ``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done`` and
  ``response.completed`` with the full response (its usage), each with a ``sequence_number`` from 0.

Messages (``vllm/entrypoints/anthropic/serving.py``, ``protocol.py``): converted to a chat request (``system`` as
the system message); the answer ``{id, type: "message", role: "assistant", content: [{type: "text", text}],
model, stop_reason, stop_sequence, usage}`` with usage ``{input_tokens: prompt - cached, output_tokens,
cache_read_input_tokens: cached, cache_creation_input_tokens: 0}`` (vLLM PR #40912, Anthropic's contract:
total input = input + cache read + cache creation); a stream sends ``message_start``, ``content_block_start``,
``content_block_delta`` (``text_delta``) per engine output, ``content_block_stop``, ``message_delta`` (stop
reason and usage) and ``message_stop``. Errors use Anthropic's shape ``{"type": "error", "error": {"type",
"message"}}``.

Simulator extension (not vLLM): the simulated model writes filler text and never calls tools. For tests of
agent handoffs, a request whose last user text contains ``[sim:call <tool>]`` and that offers a function tool of
that name gets one ``function_call`` output item (arguments ``{}``) instead of text; a non-streamed chat completion
gets the same call as ``tool_calls`` (``finish_reason`` ``tool_calls``).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .engine import DEFAULT_MAX_TOKENS, EngineRequest, SeqState
from .errors import BadRequestError, SimulatorError, bool_field
from .tokenizer import apply_chat_template, encode

if TYPE_CHECKING:
    from .app import SimInstance

__all__ = ["ResponseStore", "create_message", "create_response", "scripted_tool_call"]

_SIM_CALL = re.compile(r"\[sim:call ([A-Za-z0-9_\-]{1,64})\]")


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _openai_error(status: int, message: str, type_: str, param: str | None, code: int | None = None) -> Response:
    return _json({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


def _anthropic_error(status: int, message: str, type_: str = "invalid_request_error") -> Response:
    return _json({"type": "error", "error": {"type": type_, "message": message}}, status)


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


# --- the store ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class ResponseStore:
    """``response_store`` + ``msg_store`` of one process: what a follow-up needs (never pruned, like vLLM's)."""

    enabled: bool = field(default_factory=lambda: os.environ.get("VLLM_ENABLE_RESPONSES_API_STORE", "1") != "0")
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


# --- parsing ----------------------------------------------------------------------------------------------------
def _text(content: Any, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                raise BadRequestError("content parts must be objects", param)
            if part.get("type") in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "".join(texts)
    raise BadRequestError("content must be a string or a list of parts", param)


def input_messages(items: Any) -> list[dict[str, Any]]:
    """``input`` as chat messages (``construct_chat_messages_with_tool_call``, text only)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise BadRequestError("'input' must be a string or a list of input items", "input")
    messages: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise BadRequestError("each input item must be an object", "input")
        kind = item.get("type", "message")
        if kind == "function_call_output":
            messages.append({"role": "tool", "content": str(item.get("output", "")),
                             "tool_call_id": item.get("call_id")})
        elif kind == "function_call":
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": [{"id": item.get("call_id"), "type": "function", "function": {
                                 "name": item.get("name"), "arguments": item.get("arguments", "")}}]})
        elif kind == "reasoning":
            continue
        elif isinstance(item.get("role"), str):
            messages.append({"role": item["role"], "content": _text(item.get("content"), "input")})
        else:
            raise BadRequestError(f"unsupported input item type {str(kind)[:64]!r}", "input")
    return messages


def _positive(body: dict[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequestError(f"'{name}' must be a positive integer", name)
    return value


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequestError(f"'{name}' must be a string", name)
    return value


def scripted_tool_call(messages: Any, tools: Any) -> str | None:
    """The simulator's scripted tool call (Responses and Chat Completions): ``[sim:call NAME]`` in the last user
    message and a function tool NAME offered (Responses ``{"name"}`` or Chat ``{"function": {"name"}}``)."""
    if not isinstance(messages, list):
        return None
    last = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    found = _SIM_CALL.search(str(last.get("content", ""))) if last is not None else None
    if found is None or not isinstance(tools, list):
        return None
    names = {t.get("name") or (t.get("function") or {}).get("name") for t in tools if isinstance(t, dict)}
    return found.group(1) if found.group(1) in names else None


# --- the shared engine path -------------------------------------------------------------------------------------
async def _admit(sim: SimInstance, request: Request,
                 error: Callable[[int, str, str, str | None], Response]) -> tuple[Any, Response | None]:
    """Count, parse and record the body, apply the injected faults. Returns ``(body, None)`` or ``(None, error)``."""
    sim.totals.requests += 1
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        sim.totals.rejected += 1
        return None, error(400, f"invalid JSON body: {exc}", "invalid_request_error", None)
    sim.record(request, body)
    if not isinstance(body, dict):
        sim.totals.rejected += 1
        return None, error(400, "the request body must be a JSON object", "invalid_request_error", None)
    faults = sim.faults
    if faults.fail_rate and sim.rng.random() < faults.fail_rate:
        sim.totals.rejected += 1
        return None, error(500, "injected fault", "internal_server_error", None)
    if faults.hang:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sim._hung.add(fut)
        try:
            await fut
        finally:
            sim._hung.discard(fut)
        return None, error(503, "the server is shutting down", "service_unavailable", None)
    return body, None


def _submit(sim: SimInstance, rid: str, messages: list[dict[str, Any]], max_tokens: int) -> Any:
    if sim.driver is None:
        raise SimulatorError("the engine is not running")
    try:
        prompt = encode(apply_chat_template(messages))
    except (TypeError, KeyError) as exc:
        raise BadRequestError(f"invalid messages: {exc}", "input") from exc
    return sim.driver.submit(EngineRequest(rid, prompt, max_tokens, None, 0))


# --- /v1/responses -------------------------------------------------------------------------------------------
def _response_object(rid: str, created: int, model: str, body: dict[str, Any], max_tokens: int, status: str,
                     output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
    """``ResponsesResponse.from_request`` (field order as declared; ``id`` first)."""
    return {
        "id": rid, "created_at": created,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"), "metadata": body.get("metadata"), "model": model,
        "object": "response", "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature") or 1.0, "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "top_p": body.get("top_p") or 1.0, "background": False,
        "max_output_tokens": max_tokens, "max_tool_calls": body.get("max_tool_calls"),
        "previous_response_id": body.get("previous_response_id"), "prompt": None, "reasoning": body.get("reasoning"),
        "service_tier": body.get("service_tier", "auto"), "status": status, "text": body.get("text"),
        "top_logprobs": None, "truncation": body.get("truncation", "disabled"), "usage": usage,
        "user": body.get("user"), "input_messages": None, "output_messages": None,
    }


def _usage(state: SeqState) -> dict[str, Any]:
    prompt, output, cached = state.num_prompt_tokens, state.num_output, state.num_cached_tokens
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "input_tokens_per_turn": [],
                                                              "cached_tokens_per_turn": []},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0,
                                                               "output_tokens_per_turn": [],
                                                               "tool_output_tokens_per_turn": []},
            "total_tokens": prompt + output}


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"annotations": [], "text": text, "type": "output_text", "logprobs": None}] if text else []
    return {"id": item_id, "content": content, "role": "assistant", "status": status, "type": "message"}


def _output(state: SeqState, tool: str | None) -> list[dict[str, Any]]:
    if tool is not None:
        return [{"arguments": "{}", "call_id": f"call_{uuid.uuid4().hex[:24]}", "name": tool, "type": "function_call",
                 "id": f"fc_{uuid.uuid4().hex}", "status": "completed"}]
    return [_message_item(f"msg_{uuid.uuid4().hex}", state.output_text(), "completed")]


async def create_response(sim: SimInstance, store: ResponseStore, request: Request) -> Response:
    body, refused = await _admit(sim, request, lambda s, m, t, p: _openai_error(s, m, t, p))
    if refused is not None:
        return refused
    try:
        if "input" not in body:
            raise BadRequestError("'input' is required", "input")
        new = input_messages(body["input"])
        instructions = _optional_str(body, "instructions")
        previous = _optional_str(body, "previous_response_id")
        model = _optional_str(body, "model") or sim.config.model_name
        stream = bool_field(body, "stream", False)
        stored = bool_field(body, "store", True) and store.enabled
        if bool_field(body, "background", False):
            raise BadRequestError("the simulator does not run background responses", "background")
        max_tokens = _positive(body, "max_output_tokens", DEFAULT_MAX_TOKENS) or DEFAULT_MAX_TOKENS
        # vLLM: finish_reason "length" -> status "incomplete". The simulated model stops only at its token
        # bound; without a client bound its default length stands for a natural end of the answer ("completed").
        bounded = body.get("max_output_tokens") is not None
    except BadRequestError as exc:
        sim.totals.rejected += 1
        return _openai_error(exc.status, exc.message, exc.type, exc.param)
    prev_messages: list[dict[str, Any]] = []
    if previous is not None:
        prev = store.responses.get(previous)
        if prev is None:  # _make_not_found_error
            sim.totals.rejected += 1
            return _openai_error(404, f"Response with id '{previous}' not found.", "invalid_request_error",
                                 "response_id", 404)
        prev_messages = [m for m in store.messages.get(previous, []) if m.get("role") != "system"]
        for item in prev["output"]:
            if item.get("type") == "message":
                prev_messages += [{"role": "assistant", "content": c["text"]} for c in item["content"]]
            elif item.get("type") == "function_call":
                prev_messages.append({"role": "assistant", "content": "", "tool_calls": [{
                    "id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}]})
    messages = ([{"role": "system", "content": instructions}] if instructions else []) + prev_messages + new
    # vLLM's response id is the request's ``request_id`` (an extra field, default ``resp_<uuid>``).
    rid = body.get("request_id") if isinstance(body.get("request_id"), str) else f"resp_{uuid.uuid4().hex}"
    try:
        handle = _submit(sim, rid, messages, max_tokens)
    except SimulatorError as exc:
        sim.totals.rejected += 1
        return _openai_error(exc.status, exc.message, exc.type, exc.param)
    if stored:
        store.messages[rid] = messages
    tool = scripted_tool_call(messages, body.get("tools"))
    created = int(time.time())

    def finish(state: SeqState) -> dict[str, Any]:
        sim._account(state)
        status = "incomplete" if bounded and tool is None else "completed"
        response = _response_object(rid, created, model, body, max_tokens, status, _output(state, tool),
                                    _usage(state))
        if stored:
            store.responses[rid] = response
        return response

    if not stream:
        try:
            state = await handle.result()
        except SimulatorError as exc:
            return _openai_error(exc.status, exc.message, exc.type, exc.param)
        except asyncio.CancelledError:
            sim.driver.abort(rid)  # type: ignore[union-attr]
            raise
        return _json(finish(state))
    return StreamingResponse(_response_events(sim, handle, rid, created, model, body, max_tokens, tool, finish),
                             media_type="text/event-stream")


async def _response_events(sim: SimInstance, handle: Any, rid: str, created: int, model: str, body: dict[str, Any],
                           max_tokens: int, tool: str | None, finish: Callable[[SeqState], dict[str, Any]]
                           ) -> AsyncIterator[bytes]:
    seq = 0

    def event(kind: str, payload: dict[str, Any]) -> bytes:
        nonlocal seq
        data = _event(kind, {**payload, "sequence_number": seq, "type": kind})
        seq += 1
        return data

    state = handle.state
    initial = _response_object(rid, created, model, body, max_tokens, "in_progress", [], None)
    # Sent before the first engine output, as vLLM's responses_stream_generator does.
    yield event("response.created", {"response": initial})
    yield event("response.in_progress", {"response": initial})
    item_id = f"msg_{uuid.uuid4().hex}"
    try:
        opened = False
        async for delta, _last in handle.stream():
            if tool is not None:
                continue
            if not opened:
                opened = True
                yield event("response.output_item.added", {"item": _message_item(item_id, "", "in_progress"),
                                                           "output_index": 0})
                yield event("response.content_part.added", {"content_index": 0, "item_id": item_id, "output_index": 0,
                                                            "part": {"annotations": [], "text": "",
                                                                     "type": "output_text", "logprobs": []}})
            yield event("response.output_text.delta", {"content_index": 0, "delta": delta, "item_id": item_id,
                                                       "logprobs": [], "output_index": 0})
        final = finish(state)
        for index, item in enumerate(final["output"]):
            if item["type"] == "message":
                item["id"] = item_id
                text = state.output_text()
                part = {"annotations": [], "text": text, "type": "output_text", "logprobs": None}
                yield event("response.output_text.done", {"content_index": 0, "item_id": item_id, "logprobs": [],
                                                          "output_index": index, "text": text})
                yield event("response.content_part.done", {"content_index": 0, "item_id": item_id,
                                                           "output_index": index, "part": part})
            else:
                yield event("response.output_item.added", {"item": {**item, "status": "in_progress"},
                                                           "output_index": index})
            yield event("response.output_item.done", {"item": item, "output_index": index})
        yield event("response.completed", {"response": final})
    except SimulatorError as exc:
        yield event("error", {"code": str(exc.status), "message": exc.message, "param": exc.param})
    finally:
        if not state.finished and sim.driver is not None:
            sim.totals.aborted += 1
            sim.driver.abort(handle.request_id)


# --- /v1/messages --------------------------------------------------------------------------------------------
def anthropic_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``_convert_anthropic_to_openai_request``: ``system`` first, then the messages (text blocks joined)."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        if isinstance(system, str):
            messages.append({"role": "system", "content": system})
        elif isinstance(system, list):
            messages.append({"role": "system", "content": "".join(
                b.get("text", "") for b in system if isinstance(b, dict) and b.get("type") == "text")})
        else:
            raise BadRequestError("'system' must be a string or a list of text blocks", "system")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequestError("'messages' must be a non-empty list", "messages")
    for message in raw:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise BadRequestError("each message must have role 'user' or 'assistant'", "messages")
        content = message.get("content")
        if isinstance(content, list):
            text = "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
        elif isinstance(content, str):
            text = content
        else:
            raise BadRequestError("message content must be a string or a list of blocks", "messages")
        messages.append({"role": message["role"], "content": text})
    return messages


def _anthropic_usage(state: SeqState, *, output: bool = True) -> dict[str, int]:
    cached = state.num_cached_tokens
    return {"input_tokens": state.num_prompt_tokens - cached, "output_tokens": state.num_output if output else 0,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


async def create_message(sim: SimInstance, request: Request) -> Response:
    body, refused = await _admit(sim, request, lambda s, m, t, p: _anthropic_error(s, m, t))
    if refused is not None:
        return refused
    try:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequestError("Model is required", "model")
        max_tokens = _positive(body, "max_tokens", None)
        if max_tokens is None:
            raise BadRequestError("'max_tokens' is required", "max_tokens")
        messages = anthropic_messages(body)
        stream = bool_field(body, "stream", False)
    except BadRequestError as exc:
        sim.totals.rejected += 1
        return _anthropic_error(exc.status, exc.message)
    rid = sim.new_id("chatcmpl")  # vLLM answers with the chat completion's id
    try:
        handle = _submit(sim, rid, messages, max_tokens)
    except SimulatorError as exc:
        sim.totals.rejected += 1
        return _anthropic_error(exc.status, exc.message, exc.type)
    stop_reason = "max_tokens"  # the simulated model always stops at the token bound
    if not stream:
        try:
            state = await handle.result()
        except SimulatorError as exc:
            return _anthropic_error(exc.status, exc.message, exc.type)
        except asyncio.CancelledError:
            sim.driver.abort(rid)  # type: ignore[union-attr]
            raise
        sim._account(state)
        text = state.output_text()
        return _json({"id": rid, "type": "message", "role": "assistant",
                      "content": [{"type": "text", "text": text}] if text else [], "model": model,
                      "stop_reason": stop_reason, "stop_sequence": None, "usage": _anthropic_usage(state)})
    return StreamingResponse(_message_events(sim, handle, rid, model, stop_reason), media_type="text/event-stream")


async def _message_events(sim: SimInstance, handle: Any, rid: str, model: str, stop_reason: str
                          ) -> AsyncIterator[bytes]:
    state = handle.state
    try:
        started = False
        async for delta, _last in handle.stream():
            if not started:  # message_start comes with the first chat chunk (the first engine output)
                started = True
                yield _event("message_start", {"type": "message_start", "message": {
                    "id": rid, "type": "message", "role": "assistant", "content": [], "model": model,
                    "stop_reason": None, "stop_sequence": None, "usage": _anthropic_usage(state, output=False)}})
                yield _event("content_block_start", {"type": "content_block_start", "index": 0,
                                                     "content_block": {"type": "text", "text": ""}})
            yield _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta", "text": delta}})
        sim._account(state)
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason},
                                       "usage": _anthropic_usage(state)})
        yield _event("message_stop", {"type": "message_stop"})
    except SimulatorError as exc:
        yield _event("error", {"type": "error", "error": {"type": exc.type, "message": exc.message}})
    finally:
        if not state.finished and sim.driver is not None:
            sim.totals.aborted += 1
            sim.driver.abort(handle.request_id)
