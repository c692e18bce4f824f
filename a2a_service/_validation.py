"""Pure input checks shared by the queue core and both adapters. Each raises an ``errors`` class naming
the field (``param``)."""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from .config import BROADCAST_TARGET, ID_CHARSET, ID_MAX_LENGTH, ID_MIN_LENGTH
from .errors import InvalidRequestError, MessageTooLargeError

_ID_RE = re.compile(f"[{ID_CHARSET}]{{{ID_MIN_LENGTH},{ID_MAX_LENGTH}}}")
_UNSAFE_LOG_CHARS = re.compile(f"[^/{ID_CHARSET}]")
MAX_INSTANCE_LENGTH = 2048
MAX_MODEL_LENGTH = 256  # a router record's model name (a served model or a LoRA adapter)
# Models remembered per workflow in its status (model_instances); further ones are not added.
MAX_MODELS_PER_WORKFLOW = 64
MAX_IDENTITY_SOURCE_LENGTH = 32  # a router record's identity source label (extproc/requestcontrol/identity.py)
EMPTY_PAYLOAD = b"{}"


def check_id(value: object, param: str, *, allow_broadcast: bool = False) -> str:
    """Return ``value`` if it is a valid identifier (see ``config`` for the rules)."""
    if type(value) is not str:
        raise InvalidRequestError(f"{param} must be a string", param=param, code="invalid_type")
    if allow_broadcast and value == BROADCAST_TARGET:
        return value
    if _ID_RE.fullmatch(value) is None or value in (".", ".."):
        if not value:
            raise InvalidRequestError(f"{param} must not be empty", param=param, code="invalid_id")
        if len(value) > ID_MAX_LENGTH:
            raise InvalidRequestError(
                f"{param} is longer than {ID_MAX_LENGTH} characters", param=param, code="invalid_id"
            )
        raise InvalidRequestError(
            f"{param} may only contain [{ID_CHARSET}] and must not be '.' or '..'", param=param, code="invalid_id"
        )
    return value


def sanitize_for_log(value: object, limit: int = 64) -> str:
    """Safe to put in a log line: id characters only, bounded length."""
    text = value if isinstance(value, str) else repr(value)
    clean = _UNSAFE_LOG_CHARS.sub("?", text[:limit])
    return clean + ("..." if len(text) > limit else "")


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` nests containers deeper than ``limit`` (a scalar is depth 0, ``{}`` depth 1)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        kind = type(node)
        if kind is dict:
            node = node.values()
        elif kind is not list:
            continue
        depth += 1
        if depth > limit:
            return True
        for child in node:
            if type(child) is dict or type(child) is list:
                push((child, depth))
    return False


def encode_payload(value: Any, *, max_depth: int, max_size: int, param: str = "payload") -> bytes:
    """Encode an already-parsed JSON value for storage, enforcing depth and size limits."""
    if json_depth_exceeds(value, max_depth):
        raise InvalidRequestError(f"{param} nests deeper than {max_depth} levels", param=param, code="json_too_deep")
    encoded = orjson.dumps(value)
    if len(encoded) > max_size:
        raise MessageTooLargeError(f"{param} is {len(encoded)} bytes encoded; the limit is {max_size}", param=param)
    return encoded


def check_payload_bytes(raw: bytes, *, max_depth: int, max_size: int, param: str = "payload") -> bytes:
    """Validate JSON bytes received as-is (gRPC); empty bytes mean ``{}``. Returns the bytes to store."""
    if len(raw) > max_size:
        raise MessageTooLargeError(f"{param} is {len(raw)} bytes; the limit is {max_size}", param=param)
    if not raw:
        return EMPTY_PAYLOAD
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"{param} is not valid JSON: {exc}", param=param, code="invalid_json") from None
    if json_depth_exceeds(value, max_depth):
        raise InvalidRequestError(f"{param} nests deeper than {max_depth} levels", param=param, code="json_too_deep")
    return raw


def check_number(
    value: object,
    param: str,
    *,
    minimum: float,
    maximum: float,
    exclusive_minimum: bool = False,
) -> float:
    """A finite int/float (not bool) within bounds."""
    if type(value) not in (int, float):
        raise InvalidRequestError(f"{param} must be a number", param=param, code="invalid_type")
    number = float(value)  # type: ignore[arg-type]
    too_low = number <= minimum if exclusive_minimum else number < minimum
    if not math.isfinite(number) or too_low or number > maximum:
        lower = f"> {minimum:g}" if exclusive_minimum else f">= {minimum:g}"
        raise InvalidRequestError(f"{param} must be {lower} and <= {maximum:g}", param=param, code="out_of_range")
    return number


def check_int(value: object, param: str, *, minimum: int, maximum: int) -> int:
    if type(value) is not int:
        raise InvalidRequestError(f"{param} must be an integer", param=param, code="invalid_type")
    if not minimum <= value <= maximum:
        raise InvalidRequestError(f"{param} must be {minimum}..{maximum}", param=param, code="out_of_range")
    return value


def check_text(value: object, param: str, *, max_length: int) -> str:
    """Free text (e.g. an instance URL): printable, bounded."""
    if type(value) is not str:
        raise InvalidRequestError(f"{param} must be a string", param=param, code="invalid_type")
    if len(value) > max_length or not value.isprintable():
        raise InvalidRequestError(
            f"{param} must be printable and at most {max_length} characters", param=param, code="invalid_value"
        )
    return value
