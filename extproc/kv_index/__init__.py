"""External KV-cache indexes the prefix-aware fallback can ask which instance holds a prompt's longest prefix.

Only :mod:`extproc.kv_index.lmcache` exists today: an HTTP client of an LMCache controller's ``/lookup``. It
speaks plain HTTP, so it is importable without the optional ``lmcache`` extra installed.
"""

from extproc.kv_index.lmcache import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT_S,
    LMCacheIndex,
    LookupResponseError,
    Tokenizer,
    best_match,
    parse_lookup_response,
    simulator_tokenizer,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TIMEOUT_S",
    "LMCacheIndex",
    "LookupResponseError",
    "Tokenizer",
    "best_match",
    "parse_lookup_response",
    "simulator_tokenizer",
]
