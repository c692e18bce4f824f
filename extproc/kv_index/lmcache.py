"""Async client of an LMCache controller's KV lookup (``POST /lookup``), for the prefix-aware fallback.

The controller (``python -m lmcache.v1.api_server``) learns from its workers (LMCache inside each vLLM, or
``benchmarks/simulator/lmcache_worker.py`` for a simulated instance) which chunks of KV each instance holds.
``POST /lookup {"tokens": [...]}`` answers ``{"event_id": "...", "layout_info": {instance_id: [location,
matched_token_count]}}`` (lmcache 0.5.6, ``lmcache/v1/api_server/__main__.py``).

How the controller computes ``layout_info`` (``KVController.lookup``, lmcache 0.5.6): it cuts the tokens into
256-token chunks with chained hashes and walks them from the start; for each chunk it asks its registry for
*one* holder (the first registered instance that has it) and sets ``layout_info[holder] = (location,
end_of_chunk)``; it stops at the first chunk no instance holds. So the instance with the largest count holds
the longest cached prefix, and an instance that also holds a shorter prefix may be reported with a smaller
count or not at all. :func:`best_match` picks the largest.

The client must tokenize exactly as the backends do, or no chunk hash will match: it takes an
:class:`extproc.tokenization.Tokenizer` (``--tokenizer``: the approximate tokenizer for the simulator, the model's
``tokenizer.json`` or an instance's ``/tokenize`` for real vLLM) and, for chat requests, tokenizes the messages
with the backend's chat template, not a plain concatenation of their text.

This module only speaks HTTP (httpx): it never imports ``lmcache``. A lookup never raises: on a timeout, a
connection error, an HTTP error or a malformed answer it returns ``{}`` and increments an error counter, so the
caller falls back to its own prefix index or to load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from extproc.tokenization import Tokenizer

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TIMEOUT_S",
    "LMCacheIndex",
    "LookupResponseError",
    "best_match",
    "parse_lookup_response",
]

DEFAULT_TIMEOUT_S = 0.05
# Only the start of very long prompts is sent: the match is a prefix, so a longer prompt cannot match more than
# this, and the request body (JSON ints, ~8 bytes a token) and the controller's hashing stay bounded.
DEFAULT_MAX_TOKENS = 32_768


class LookupResponseError(ValueError):
    """The controller's answer does not have the documented shape."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_lookup_response(data: Any) -> dict[str, int]:
    """``{instance_id: matched_token_count}`` from the JSON of a ``/lookup`` answer.

    Accepts ``{"event_id": str, "layout_info": {instance_id: [location: str, count: int >= 0]}}`` (extra keys
    are ignored); raises :class:`LookupResponseError` on anything else.
    """
    if not isinstance(data, Mapping):
        raise LookupResponseError(f"expected a JSON object, got {type(data).__name__}")
    event_id = data.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise LookupResponseError("'event_id' must be a string")
    layout = data.get("layout_info")
    if not isinstance(layout, Mapping):
        raise LookupResponseError("'layout_info' must be an object")
    out: dict[str, int] = {}
    for instance_id, entry in layout.items():
        if not isinstance(instance_id, str):
            raise LookupResponseError("layout_info keys must be instance ids (strings)")
        if not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) != 2:
            raise LookupResponseError(f"layout_info[{instance_id!r}] must be [location, matched_tokens]")
        location, count = entry
        if not isinstance(location, str):
            raise LookupResponseError(f"layout_info[{instance_id!r}][0] (location) must be a string")
        if not _is_int(count) or count < 0:
            raise LookupResponseError(f"layout_info[{instance_id!r}][1] (matched tokens) must be an int >= 0")
        out[instance_id] = count
    return out


def best_match(matches: Mapping[str, int]) -> tuple[str, int] | None:
    """The ``(name, matched_tokens)`` with the most matched tokens (ties: smallest name), or ``None``."""
    best: tuple[str, int] | None = None
    for name in sorted(matches):
        count = matches[name]
        if count > 0 and (best is None or count > best[1]):
            best = (name, count)
    return best


class LMCacheIndex:
    """Asks an LMCache controller which Envoy cluster holds the longest cached prefix of a prompt.

    ``instance_map`` maps LMCache instance ids (``lmcache_instance_id`` of each worker) to Envoy cluster
    names; instances the controller reports that are not in the map are ignored (counted in
    :attr:`unknown_instances`). The index owns ``tokenizer``: :meth:`aclose` closes it too. Counters are plain
    attributes, exported by :meth:`collector`.
    """

    def __init__(
        self,
        url: str,
        instance_map: Mapping[str, str],
        tokenizer: Tokenizer,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        self.url = url.rstrip("/")
        self.instance_map = dict(instance_map)
        self.tokenizer = tokenizer
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self._client: httpx.AsyncClient | None = None
        # Counters (monotonic).
        self.lookups = 0
        self.hits = 0  # lookups that matched at least one mapped instance
        self.errors_timeout = 0
        self.errors_connect = 0  # connection refused/reset and other transport errors
        self.errors_http = 0  # non-2xx answers
        self.errors_parse = 0  # not JSON, or not the documented shape
        self.errors_tokenize = 0  # the tokenizer gave no ids (malformed messages, /tokenize failed)
        self.errors_other = 0
        self.unknown_instances = 0

    @property
    def errors(self) -> int:
        return (
            self.errors_timeout
            + self.errors_connect
            + self.errors_http
            + self.errors_parse
            + self.errors_tokenize
            + self.errors_other
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(self.timeout_s))
        return self._client

    async def aclose(self) -> None:
        """Close the controller connection and the tokenizer; idempotent, and the index stays usable (a later
        lookup opens a new connection)."""
        client, self._client = self._client, None
        try:
            if client is not None:
                await client.aclose()
        finally:
            await self.tokenizer.aclose()

    async def __aenter__(self) -> LMCacheIndex:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def collector(self) -> Collector:
        """The counters as Prometheus metrics (register it with the server's registry)."""
        return _LMCacheCollector(self)

    async def tokens(self, prompt_text: str, messages: Sequence[Any] | None = None) -> list[int] | None:
        """The prompt's token ids as the backend computes them (chat ``messages`` through its chat template);
        ``None`` (counted in ``errors_tokenize``) when the tokenizer gives none. Never raises."""
        try:
            if messages is not None:
                ids = await self.tokenizer.chat_ids(messages)
            else:
                ids = await self.tokenizer.prompt_ids(prompt_text)
        except Exception:  # the Tokenizer contract says it never raises; a broken one must not break routing
            ids = None
        if ids is None:
            self.errors_tokenize += 1
        return ids

    async def lookup(self, prompt_text: str, messages: Sequence[Any] | None = None) -> dict[str, int]:
        """``{cluster: matched_tokens}`` for the prompt (or chat ``messages``); ``{}`` on any error or timeout."""
        tokens = await self.tokens(prompt_text, messages)
        if tokens is None:
            self.lookups += 1
            return {}
        return await self.lookup_tokens(tokens)

    async def cached_fractions(self, prompt_text: str, messages: list[Any] | None) -> dict[str, float] | None:
        """Per Envoy cluster, the share (0..1) of the prompt's tokens the controller says that instance holds;
        ``None`` when there is no answer (no tokens, no match, an error or a timeout: all counted).

        Chat requests (``messages`` not None) are tokenized as the backend tokenizes them, through the chat
        template. Never raises.
        """
        tokens = await self.tokens(prompt_text, messages)
        if tokens is None:
            self.lookups += 1
            return None
        matches = await self.lookup_tokens(tokens)
        if not matches or not tokens:
            return None
        return {cluster: min(1.0, matched / len(tokens)) for cluster, matched in matches.items()}

    async def lookup_tokens(self, tokens: Sequence[int]) -> dict[str, int]:
        """Like :meth:`lookup`, for already tokenized prompts."""
        self.lookups += 1
        if not tokens:
            return {}
        payload = {"tokens": list(tokens[: self.max_tokens])}
        try:
            # httpx's timeout applies per phase (connect, write, read); this bounds the whole lookup.
            async with asyncio.timeout(self.timeout_s):
                response = await self._http().post("/lookup", json=payload)
        except (TimeoutError, httpx.TimeoutException):
            self.errors_timeout += 1
            return {}
        except httpx.TransportError:
            self.errors_connect += 1
            return {}
        except Exception:
            self.errors_other += 1
            return {}
        if not response.is_success:
            self.errors_http += 1
            return {}
        try:
            by_instance = parse_lookup_response(response.json())
        except ValueError:  # JSONDecodeError and LookupResponseError
            self.errors_parse += 1
            return {}
        matches: dict[str, int] = {}
        for instance_id, count in by_instance.items():
            cluster = self.instance_map.get(instance_id)
            if cluster is None:
                self.unknown_instances += 1
                continue
            if count > matches.get(cluster, 0):
                matches[cluster] = count
        if matches:
            self.hits += 1
        return matches


class _LMCacheCollector(Collector):
    def __init__(self, index: LMCacheIndex) -> None:
        self.index = index

    def collect(self) -> Iterator[CounterMetricFamily]:
        index = self.index
        yield CounterMetricFamily("extproc_kv_index_lookups", "LMCache controller lookups", value=index.lookups)
        yield CounterMetricFamily(
            "extproc_kv_index_hits", "LMCache lookups that matched a known instance", value=index.hits
        )
        errors = CounterMetricFamily(
            "extproc_kv_index_errors",
            "LMCache lookups that failed, by reason (routing used its own index)",
            labels=["reason"],
        )
        for reason in ("timeout", "connect", "http", "parse", "tokenize", "other"):
            errors.add_metric([reason], getattr(index, f"errors_{reason}"))
        yield errors
        yield CounterMetricFamily(
            "extproc_kv_index_unknown_instances",
            "Instances in LMCache answers missing from --lmcache-instance-map",
            value=index.unknown_instances,
        )
