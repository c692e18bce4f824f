"""Pure extraction of ``usage`` from the tail of an OpenAI-compatible response body.

The observer keeps only the last ``USAGE_TAIL_BYTES`` of a response: ``usage`` is the last member of a
non-streaming vLLM response and the last ``data:`` chunk before ``[DONE]`` of a streaming one (with
``stream_options.include_usage``). Scanning a bounded tail keeps memory flat for long responses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

USAGE_TAIL_BYTES = 16 * 1024
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_CACHED = re.compile(rb'"cached_tokens"\s*:\s*(\d+)')


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


def extract_usage(tail: bytes) -> Usage | None:
    """The last ``usage`` object in ``tail``, or None when the response carried none."""
    last = None
    for last in _USAGE.finditer(tail):  # noqa: B007 - we want the last match
        pass
    if last is None:
        return None
    rest = tail[last.end():]
    prompt = _PROMPT.search(rest)
    if prompt is None:
        return None
    completion = _COMPLETION.search(rest)
    cached = _CACHED.search(rest)
    return Usage(
        int(prompt.group(1)),
        int(completion.group(1)) if completion else 0,
        int(cached.group(1)) if cached else 0,
    )


class TailBuffer:
    """Keeps the last ``limit`` bytes of a streamed body."""

    __slots__ = ("_data", "limit")

    def __init__(self, limit: int = USAGE_TAIL_BYTES) -> None:
        self.limit = limit
        self._data = b""

    def feed(self, chunk: bytes) -> None:
        data = self._data + chunk
        self._data = data[-self.limit:] if len(data) > self.limit else data

    @property
    def data(self) -> bytes:
        return self._data
