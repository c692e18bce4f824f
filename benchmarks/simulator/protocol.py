"""OpenAI-compatible wire format, as vLLM speaks it: pure parsing and encoding, no I/O.

Parsing turns a decoded JSON body into a :class:`ParsedRequest` or raises :class:`BadRequestError` naming the
faulty field; encoding builds response bodies and SSE chunks. Accepted like vLLM: any ``model`` name (the
simulator serves one model and echoes the requested name), ``prompt`` as a string, a list of strings (the
first is used), a list of token ids or a list of such lists (the first is used), chat ``content`` as a string
or a list of ``{"type": "text"}`` parts. Sampling parameters (temperature, top_p, stop ...) are accepted and
ignored: output is always ``max_tokens`` tokens long (``finish_reason`` ``"length"``); only ``n == 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from .engine import DEFAULT_MAX_TOKENS
from .errors import BadRequestError, bool_field
from .responses import scripted_tool_call
from .tokenizer import apply_chat_template, encode, pieces

__all__ = [
    "ParsedRequest",
    "Usage",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "error_body",
    "parse_chat",
    "parse_completion",
    "parse_tokenize",
    "sse",
    "tokenize_response",
    "usage",
]

MAX_TOKEN_ID = 2**32
Kind = Literal["completion", "chat"]


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int]


@dataclass(slots=True, frozen=True)
class ParsedRequest:
    kind: Kind
    model: str | None
    prompt_token_ids: list[int]
    max_tokens: int
    stream: bool
    include_usage: bool
    seed: int | None
    priority: int = 0  # vLLM's request field (lower runs earlier, with --scheduling-policy priority)
    tool_call: str | None = None  # the simulator's scripted tool call (responses.scripted_tool_call)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _token_ids(value: list[Any]) -> list[int]:
    for t in value:
        if not _is_int(t) or not 0 <= t < MAX_TOKEN_ID:
            raise BadRequestError("token ids in 'prompt' must be integers in [0, 2**32)", "prompt")
    return value


def _prompt_ids(prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        ids = encode(prompt)
    elif isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):
            ids = encode(first)
        elif isinstance(first, list):
            ids = _token_ids(first)
        elif _is_int(first):
            ids = _token_ids(prompt)
        else:
            raise BadRequestError(
                "'prompt' must be a string, a list of strings, or token ids (a list of integers)", "prompt"
            )
    elif prompt is None:
        raise BadRequestError("'prompt' is required", "prompt")
    else:
        raise BadRequestError("'prompt' must be a non-empty string, list of strings, or list of token ids", "prompt")
    if not ids:
        raise BadRequestError("'prompt' must not be empty", "prompt")
    return ids


def _common(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object", None)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequestError("'model' must be a string", "model")
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise BadRequestError("only n == 1 is supported by the simulator", "n")
    return body


def _max_tokens(body: Mapping[str, Any], *names: str) -> int:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise BadRequestError(f"'{name}' must be a positive integer", name)
        return value
    return DEFAULT_MAX_TOKENS


def _stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequestError("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise BadRequestError("'stream_options' must be an object", "stream_options")
        include_usage = options.get("include_usage") or False
        if not isinstance(include_usage, bool):
            raise BadRequestError("'stream_options.include_usage' must be a boolean", "stream_options")
        if not stream:
            raise BadRequestError("'stream_options' is only allowed when 'stream' is true", "stream_options")
    return stream, include_usage


def _seed(body: Mapping[str, Any]) -> int | None:
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise BadRequestError("'seed' must be an integer", "seed")
    return seed


def _priority(body: Mapping[str, Any]) -> int:
    # vLLM's CompletionRequest/ChatCompletionRequest: ``priority: int = 0`` (vllm/entrypoints/openai/protocol.py).
    priority = body.get("priority", 0)
    if not _is_int(priority):
        raise BadRequestError("'priority' must be an integer", "priority")
    return priority


def parse_completion(body: Any) -> ParsedRequest:
    """``POST /v1/completions`` body -> request. Raises :class:`BadRequestError`."""
    b = _common(body)
    ids = _prompt_ids(b.get("prompt"))
    stream, include_usage = _stream(b)
    return ParsedRequest(
        "completion",
        b.get("model"),
        ids,
        _max_tokens(b, "max_tokens"),
        stream,
        include_usage,
        _seed(b),
        _priority(b),
    )


def parse_chat(body: Any) -> ParsedRequest:
    """``POST /v1/chat/completions`` body -> request (prompt = chat template applied). Raises
    :class:`BadRequestError`."""
    b = _common(body)
    messages = b.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' must be a non-empty list", "messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequestError("each message must be an object with a string 'role'", "messages")
    try:
        text = apply_chat_template(messages)
    except (TypeError, KeyError) as exc:
        raise BadRequestError(f"invalid message content: {exc}", "messages") from exc
    stream, include_usage = _stream(b)
    max_tokens = _max_tokens(b, "max_completion_tokens", "max_tokens")
    return ParsedRequest(
        "chat", b.get("model"), encode(text), max_tokens, stream, include_usage, _seed(b), _priority(b),
        scripted_tool_call(messages, b.get("tools")),
    )


def parse_tokenize(body: Any) -> tuple[list[int], list[str] | None]:
    """``POST /tokenize`` body -> ``(token ids, token strings or None)``, as vLLM accepts it
    (``vllm/entrypoints/openai/protocol.py``): ``TokenizeCompletionRequest`` ``{"model", "prompt",
    "add_special_tokens", "return_token_strs"}`` or ``TokenizeChatRequest`` ``{"model", "messages",
    "add_generation_prompt", "continue_final_message", "add_special_tokens", "return_token_strs"}``. The
    tokenizer adds no special tokens either way (it has no BOS: the chat template writes it). Raises
    :class:`BadRequestError`."""
    b = _common(body)
    with_strs = bool_field(b, "return_token_strs", False)
    bool_field(b, "add_special_tokens", True)
    if "messages" in b:
        messages = b.get("messages")
        if not isinstance(messages, list):
            raise BadRequestError("'messages' must be a list", "messages")
        generation = bool_field(b, "add_generation_prompt", True)
        if generation and bool_field(b, "continue_final_message", False):
            raise BadRequestError(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.", "messages"
            )
        try:
            text = apply_chat_template(messages, generation)
        except (TypeError, KeyError, AttributeError) as exc:
            raise BadRequestError(f"invalid messages: {exc}", "messages") from exc
    else:
        text = b.get("prompt")
        if not isinstance(text, str):
            raise BadRequestError("'prompt' (a string) or 'messages' is required", "prompt")
    return encode(text), (pieces(text) if with_strs else None)


def tokenize_response(ids: list[int], token_strs: list[str] | None, max_model_len: int) -> dict[str, Any]:
    """vLLM's ``TokenizeResponse``."""
    return {"count": len(ids), "max_model_len": max_model_len, "tokens": ids, "token_strs": token_strs}


# --- encoding -------------------------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Usage:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_response(
    rid: str, created: int, model: str, text: str, finish_reason: str, use: Usage
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
        ],
        "usage": use,
    }


def chat_response(rid: str, created: int, model: str, text: str, finish_reason: str, use: Usage) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
        ],
        "usage": use,
    }


def completion_chunk(
    rid: str, created: int, model: str, text: str | None, finish_reason: str | None, use: Usage | None = None
) -> dict[str, Any]:
    """A streamed completion chunk; with ``use`` the final usage-only chunk (empty ``choices``)."""
    choices = (
        []
        if use is not None
        else [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}]
    )
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if use is not None:
        chunk["usage"] = use
    return chunk


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None,
    use: Usage | None = None,
) -> dict[str, Any]:
    """A streamed chat chunk; with ``use`` the final usage-only chunk (empty ``choices``)."""
    choices = (
        []
        if use is not None
        else [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    )
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if use is not None:
        chunk["usage"] = use
    return chunk


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": None}}


def sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"
