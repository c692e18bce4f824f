"""The KV index the server runs with, built from its :class:`~extproc.config.Settings`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from extproc.kv_index.lmcache import LMCacheIndex
from extproc.tokenization import build_tokenizer

if TYPE_CHECKING:
    from extproc.config import Settings

__all__ = ["build_kv_index", "parse_instance_map"]


def parse_instance_map(spec: str) -> dict[str, str]:
    """``lmcache_instance_id=cluster,...`` (``--lmcache-instance-map``) as a dict; items without ``=`` are
    skipped."""
    return dict(item.strip().split("=", 1) for item in spec.split(",") if "=" in item)


def build_kv_index(settings: Settings, instances: Sequence[str]) -> LMCacheIndex | None:
    """The :class:`LMCacheIndex` of ``--kv-index lmcache`` (``None`` for ``local``), tokenizing with
    ``--tokenizer``. ``instances`` are the Envoy clusters: the LMCache instance ids when no
    ``--lmcache-instance-map`` is given. Raises ``ValueError`` if the tokenizer cannot be built (a missing file).
    The caller owns the index: register :meth:`LMCacheIndex.collector` and ``await index.aclose()`` on shutdown.
    """
    if settings.kv_index != "lmcache":
        return None
    if not settings.lmcache_url:
        raise ValueError("--kv-index lmcache needs --lmcache-url")
    mapping = parse_instance_map(settings.lmcache_instance_map) or {name: name for name in instances}
    tokenizer = build_tokenizer(settings.tokenizer)
    return LMCacheIndex(settings.lmcache_url, mapping, tokenizer, timeout_s=settings.lmcache_timeout)
