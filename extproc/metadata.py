"""Pure parsing of the routing-relevant parts of an OpenAI-compatible request.

Bytes and header values in, a ``RoutingInput`` out, or a ``BadRequest`` naming the offending field. No I/O, no
globals: the servicer calls it once per request and unit tests call it directly.

Precedence: a ``workflow_metadata`` object in the body wins over the ``x-workflow-id`` / ``x-agent-id`` headers
as a whole (the body is what the application wrote for this very request; headers are usually set once per
client). The headers are used only when the body carries no ``workflow_metadata``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from extproc.config import ID_CHARSET, MAX_ID_LENGTH, METADATA_FIELD
from extproc.errors import BadRequest


class ContextSharing(StrEnum):
    AUTO = "auto"
    BROADCAST = "broadcast"
    SELECTIVE = "selective"
    NONE = "none"


_STRATEGIES = ", ".join(s.value for s in ContextSharing)
_ID = re.compile(f"[{ID_CHARSET}]+")
# "metadata": upstream's free-form object (vllm-project/production-stack PR #625), accepted and not used.
_FIELDS = frozenset(
    {"workflow_id", "agent_id", "parent_request_id", "workflow_priority", "context_sharing_strategy", "metadata"}
)
MAX_PRIORITY = 10.0  # upstream's bound (Field(le=10.0)); docs/compatibility.md


@dataclass(frozen=True, slots=True)
class WorkflowMetadata:
    workflow_id: str
    agent_id: str | None = None
    parent_request_id: str | None = None
    workflow_priority: float = 1.0
    context_sharing_strategy: ContextSharing = ContextSharing.AUTO

    @property
    def wants_affinity(self) -> bool:
        """``none`` means: treat the request as independent of its workflow."""
        return self.context_sharing_strategy is not ContextSharing.NONE


@dataclass(frozen=True, slots=True)
class RoutingInput:
    metadata: WorkflowMetadata | None
    # The body to forward when it must change (metadata stripped); None = forward unchanged.
    rewritten_body: bytes | None = None
    # The prompt as text, for prefix-aware routing of requests that have no workflow affinity.
    prompt_text: str = ""
    # Chat requests' messages (as parsed), for KV indexes that tokenize the chat template like the backend.
    messages: list[Any] | None = None
    # The body as received (a JSON object), when the router may add a field to it (vLLM's ``priority``).
    raw: bytes | None = None
    # The generation's bound (max_completion_tokens, else max_tokens; None: unset) and whether it streams: the
    # request's deadline derives from them (requestcontrol/deadline.py).
    max_tokens: int | None = None
    stream: bool = False
    # Identity keys clients already send (requestcontrol/identity.py): whether ``metadata`` came from the body's
    # own ``workflow_metadata`` object (which wins as a whole, ``workflow_id: null`` included), OpenAI's
    # ``prompt_cache_key``, and the Responses API's ``previous_response_id`` / ``store`` (vLLM's default: true).
    from_body: bool = False
    prompt_cache_key: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    # The Responses API's ``request_id`` (vLLM's extra field; the response's id is this request id).
    request_id: str | None = None
    # The request's ``model`` (None: not sent; vLLM then serves its first served model name).
    model: str | None = None


RESPONSES_PATH = "/v1/responses"
MESSAGES_PATH = "/v1/messages"


def prompt_text(body: dict[str, Any]) -> str:
    """The text a prefix cache sees first: the completion prompt, or the chat messages in order."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0]  # a batch: route on its first prompt
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        parts.append(str(message.get("role", "")))
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "\n".join(parts)


def _text_parts(content: Any, parts: list[str]) -> None:
    """Append a message's text: a string, or the ``text`` of its parts (chat ``text``, Responses ``input_text`` /
    ``output_text``, Anthropic ``text`` blocks)."""
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]


def responses_prompt_text(body: dict[str, Any]) -> str:
    """A Responses-API request's text in the order vLLM renders it: ``instructions`` (the system message), then
    ``input`` (a string, or items with ``role`` and ``content``; tool outputs by their ``output``)."""
    parts: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        parts += ["system", instructions]
    items = body.get("input")
    if isinstance(items, str):
        parts += ["user", items]
    elif isinstance(items, list):
        for item in items:
            if not isinstance(item, dict):
                continue
            if "role" in item:
                parts.append(str(item.get("role", "")))
                _text_parts(item.get("content"), parts)
            elif isinstance(item.get("output"), str):
                parts.append(item["output"])
    return "\n".join(parts)


def messages_prompt_text(body: dict[str, Any]) -> str:
    """An Anthropic Messages request's text: ``system`` (a string or text blocks), then the messages."""
    parts: list[str] = []
    system = body.get("system")
    if system is not None:
        parts.append("system")
        _text_parts(system, parts)
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                parts.append(str(message.get("role", "")))
                _text_parts(message.get("content"), parts)
    return "\n".join(parts)


def _check_key(value: Any, param: str) -> str | None:
    """An identity key the client sends for its own reasons (OpenAI accepts any string): only its type and
    length are checked; null or empty means absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{param}' must be a string, got {type(value).__name__}", param, "invalid_type")
    if len(value) > MAX_ID_LENGTH:
        raise BadRequest(f"'{param}' is longer than {MAX_ID_LENGTH} characters", param, "too_long")
    return value or None


def _check_id(value: Any, param: str, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise BadRequest(f"'{param}' is required when workflow_metadata is present", param, "missing_field")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{param}' must be a string, got {type(value).__name__}", param, "invalid_type")
    if not value.strip():
        raise BadRequest(f"'{param}' must not be empty", param, "invalid_value")
    if len(value) > MAX_ID_LENGTH:
        raise BadRequest(f"'{param}' is longer than {MAX_ID_LENGTH} characters", param, "too_long")
    if _ID.fullmatch(value) is None or value in (".", ".."):
        raise BadRequest(f"'{param}' may only contain [{ID_CHARSET}] and must not be '.' or '..'", param,
                         "invalid_value")
    return value


def parse_metadata(obj: Any) -> WorkflowMetadata:
    """Validate the ``workflow_metadata`` object of a request body."""
    if not isinstance(obj, dict):
        raise BadRequest(
            f"'{METADATA_FIELD}' must be an object, got {type(obj).__name__}", METADATA_FIELD, "invalid_type"
        )
    unknown = obj.keys() - _FIELDS
    if unknown:
        name = sorted(map(str, unknown))[0]
        raise BadRequest(
            f"unknown field '{METADATA_FIELD}.{name}' (allowed: {', '.join(sorted(_FIELDS))})",
            f"{METADATA_FIELD}.{name}",
            "unknown_field",
        )
    workflow_id = _check_id(obj.get("workflow_id"), f"{METADATA_FIELD}.workflow_id", required=True)
    agent_id = _check_id(obj.get("agent_id"), f"{METADATA_FIELD}.agent_id", required=False)
    parent = _check_id(obj.get("parent_request_id"), f"{METADATA_FIELD}.parent_request_id", required=False)

    priority = obj.get("workflow_priority", 1.0)
    param = f"{METADATA_FIELD}.workflow_priority"
    if priority is None:
        priority = 1.0
    if isinstance(priority, bool) or not isinstance(priority, int | float):
        raise BadRequest(f"'{param}' must be a number, got {type(priority).__name__}", param, "invalid_type")
    priority = float(priority)
    if not math.isfinite(priority) or not 0 <= priority <= MAX_PRIORITY:
        raise BadRequest(f"'{param}' must be a number from 0 to {MAX_PRIORITY:g}", param, "invalid_value")
    extra = obj.get("metadata")
    if extra is not None and not isinstance(extra, dict):
        param = f"{METADATA_FIELD}.metadata"
        raise BadRequest(f"'{param}' must be an object, got {type(extra).__name__}", param, "invalid_type")

    strategy = obj.get("context_sharing_strategy", ContextSharing.AUTO.value)
    param = f"{METADATA_FIELD}.context_sharing_strategy"
    if strategy is None:
        strategy = ContextSharing.AUTO.value
    if not isinstance(strategy, str):
        raise BadRequest(f"'{param}' must be a string, got {type(strategy).__name__}", param, "invalid_type")
    try:
        sharing = ContextSharing(strategy)
    except ValueError:
        raise BadRequest(
            f"'{param}' must be one of {_STRATEGIES}, got {strategy[:64]!r}", param, "invalid_value"
        ) from None
    assert workflow_id is not None
    return WorkflowMetadata(workflow_id, agent_id, parent, priority, sharing)


def metadata_from_headers(workflow_id: str | None, agent_id: str | None) -> WorkflowMetadata | None:
    """Metadata from the ``x-workflow-id`` / ``x-agent-id`` headers (no workflow id → none)."""
    if workflow_id is None:
        return None
    wid = _check_id(workflow_id, "x-workflow-id", required=True)
    aid = _check_id(agent_id, "x-agent-id", required=False)
    assert wid is not None
    return WorkflowMetadata(wid, aid)


def _body_metadata(obj: Any) -> WorkflowMetadata | None:
    """``workflow_id: null`` (upstream's model allows it) means no workflow: no affinity, nothing reported, and
    the headers do not fill in (the body's object wins as a whole). Its other fields are still checked."""
    if isinstance(obj, dict) and obj.get("workflow_id", "") is None:
        parse_metadata({**obj, "workflow_id": "-"})  # any valid id: only the other fields' errors can surface
        return None
    return parse_metadata(obj)


def parse_llm_body(
    raw: bytes, header_metadata: WorkflowMetadata | None, *, strip_metadata: bool, prompt_always: bool = False,
    path: str = "",
) -> RoutingInput:
    """Parse a completions / chat-completions / responses / messages body once and extract its routing input.
    The prompt text is extracted for requests without workflow affinity, and for every request with
    ``prompt_always`` (the cost model weighs every request's uncached tokens)."""
    if not raw:
        raise BadRequest("request body is empty; expected a JSON object", None, "invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson's message says what and where (also for nesting deeper than its 1024 limit, bad UTF-8).
        raise BadRequest(f"request body is not valid JSON: {exc}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest(
            f"request body must be a JSON object, got {type(body).__name__}", None, "invalid_json"
        )
    from_body = False
    if METADATA_FIELD in body:
        obj = body[METADATA_FIELD]
        from_body = obj is not None
        metadata = header_metadata if obj is None else _body_metadata(obj)
    else:
        metadata = header_metadata
    responses = path == RESPONSES_PATH
    cache_key = _check_key(body.get("prompt_cache_key"), "prompt_cache_key")
    previous = _check_key(body.get("previous_response_id"), "previous_response_id") if responses else None
    text, messages = "", None
    if prompt_always or metadata is None or not metadata.wants_affinity:
        if responses:
            text = responses_prompt_text(body)
        elif path == MESSAGES_PATH:
            text = messages_prompt_text(body)
        else:
            text = prompt_text(body)
            raw_messages = body.get("messages")
            messages = raw_messages if isinstance(raw_messages, list) else None
    limit = body.get("max_output_tokens") if responses else body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    max_tokens = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
    stream = body.get("stream") is True
    store = body.get("store") is not False
    request_id = body.get("request_id") if responses else None
    request_id = request_id if isinstance(request_id, str) and request_id else None
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f"'model' must be a string, got {type(model).__name__}", "model", "invalid_model")
    if not strip_metadata or METADATA_FIELD not in body:
        return RoutingInput(metadata, None, text, messages, raw, max_tokens, stream, from_body, cache_key, previous,
                            store, request_id, model=model)
    del body[METADATA_FIELD]
    return RoutingInput(metadata, _encode_stripped(raw, body), text, messages, raw, max_tokens, stream, from_body,
                        cache_key, previous, store, request_id, model=model)


def with_field(body: bytes, name: str, value: int | str) -> bytes:
    """``body`` (a JSON object) with ``"name": value`` added as its first member, without a second parse. A
    member of that name the client sent comes later and wins (JSON parsers, vLLM's included, keep the last)."""
    start = body.find(b"{")
    member = b'"' + name.encode() + b'":' + orjson.dumps(value)
    rest = body[start + 1:]
    return b"{" + member + (b"," + rest if rest.strip() != b"}" else b"}")


_LONG_DIGIT_RUN = re.compile(rb"\d{19}")


def _encode_stripped(raw: bytes, body: dict[str, Any]) -> bytes:
    """The body without ``workflow_metadata``, every other value as the client sent it.

    Two orjson limits need the standard library instead: it reads integers beyond 64 bits as floats (its
    re-encoding would forward ``"seed": 123456789012345678901234`` as ``1.2345678901234568e+23``; such a float
    is at least 9.2e18, and orjson writes every float from 1e16 up with ``e+``), and it writes at most 254
    levels of nesting while it reads 1024. Only such bodies (rare; a string may hold ``e+`` too) take the
    slower path."""
    try:
        encoded: bytes | None = orjson.dumps(body)
    except orjson.JSONEncodeError:
        encoded = None
    # An integer beyond 64 bits has at least 19 digits in the raw body; text that merely contains "e+" (code,
    # formulas) costs one C-level regex scan, not a second parse.
    if encoded is not None and (b"e+" not in encoded or _LONG_DIGIT_RUN.search(raw) is None):
        return encoded
    try:
        exact = json.loads(raw)
        del exact[METADATA_FIELD]
        return json.dumps(exact, separators=(",", ":"), allow_nan=False).encode()
    except (RecursionError, ValueError):
        if encoded is not None:
            return encoded  # lossy only for integers beyond 64 bits, as before
        raise BadRequest(
            f"request body is nested too deeply to forward without '{METADATA_FIELD}' (keep it under 900 levels)",
            None, "invalid_json",
        ) from None
