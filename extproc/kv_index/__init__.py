"""External KV-cache indexes the prefix-aware fallback can ask which instance holds a prompt's longest prefix.

Only :mod:`extproc.kv_index.lmcache` exists today: an HTTP client of an LMCache controller's ``/lookup``. It
speaks plain HTTP, so it is importable without the optional ``lmcache`` extra installed. :func:`build_kv_index`
builds the one the server's settings ask for, with the ``--tokenizer`` they name.
"""

from extproc.kv_index._factory import build_kv_index, parse_instance_map
from extproc.kv_index.lmcache import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT_S,
    LMCacheIndex,
    LookupResponseError,
    best_match,
    parse_lookup_response,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TIMEOUT_S",
    "LMCacheIndex",
    "LookupResponseError",
    "best_match",
    "build_kv_index",
    "parse_instance_map",
    "parse_lookup_response",
]
