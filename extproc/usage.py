"""Pure extraction of ``usage`` from the tail of an OpenAI-compatible response body.

The observer keeps only the last ``USAGE_TAIL_BYTES`` of a response: ``usage`` is the last member of a
non-streaming vLLM response and the last ``data:`` chunk before ``[DONE]`` of a streaming one (with
``stream_options.include_usage``). Scanning a bounded tail keeps memory flat for long responses.

Three usage shapes, all vLLM's: Chat/Completions ``{prompt_tokens, completion_tokens, prompt_tokens_details:
{cached_tokens}}``; Responses ``{input_tokens, input_tokens_details: {cached_tokens}, output_tokens}``
(``vllm/entrypoints/openai/responses/protocol.py`` ``ResponseUsage``; a stream's last event,
``response.completed``, carries the full response); Anthropic Messages ``{input_tokens, output_tokens,
cache_read_input_tokens, cache_creation_input_tokens}`` where, by Anthropic's contract, ``input_tokens`` excludes
the cache reads (vLLM PR #40912, ``vllm/entrypoints/anthropic/serving.py``; the stream's last ``message_delta``
carries it). Without the cache fields (older vLLM), ``input_tokens`` is the whole prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

USAGE_TAIL_BYTES = 16 * 1024
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_PROMPT = re.compile(rb'"(?:prompt_tokens|input_tokens)"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"(?:completion_tokens|output_tokens)"\s*:\s*(\d+)')
_CACHED = re.compile(rb'"cached_tokens"\s*:\s*(\d+)')
_CACHE_READ = re.compile(rb'"cache_read_input_tokens"\s*:\s*(\d+)')
_CACHE_CREATION = re.compile(rb'"cache_creation_input_tokens"\s*:\s*(\d+)')


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
    read = _CACHE_READ.search(rest)
    if read is not None:  # Anthropic: input_tokens are the uncached tokens
        creation = _CACHE_CREATION.search(rest)
        hits = int(read.group(1))
        return Usage(int(prompt.group(1)) + hits + (int(creation.group(1)) if creation else 0),
                     int(completion.group(1)) if completion else 0, hits)
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
