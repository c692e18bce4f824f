"""vLLM's prefix-cache block hashes, computed from token ids exactly as the servers compute them.

``hash_block_tokens`` in ``vllm/v1/core/kv_cache_utils.py``: a full block's hash is ``hash_fn((parent_hash,
tuple(block_token_ids), extra_keys))``, the parent of the first block being ``NONE_HASH``. With
``--prefix-caching-hash-algo sha256_cbor`` ``hash_fn`` is ``sha256_cbor`` (``vllm/utils/hashing.py``: SHA-256 of
``cbor2.dumps(obj, canonical=True)``), and ``init_none_hash`` sets ``NONE_HASH = hash_fn(PYTHONHASHSEED)`` (the
environment variable's *string*); without ``PYTHONHASHSEED`` vLLM draws 32 random bytes, and no router can
reproduce its hashes - pin it on every server. ``extra_keys`` is ``None`` for requests without LoRA,
multimodal input, ``cache_salt`` or prompt embeddings, the only ones this module hashes. Only full blocks are
hashed (``block_size`` tokens, 16 by default).

KV events carry vLLM's ``ExternalBlockHash`` (``maybe_convert_block_hash``): with
``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`` (vLLM's default) the low 64 bits of the big-endian integer of the
digest; without it the digest bytes, which :func:`external_hash` maps to the same integer, so the router keys
its index by that integer either way.

vLLM's default algorithm (``sha256``, over ``pickle``) and ``xxhash`` variants are not reproduced: configure
the servers with ``sha256_cbor``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final, Literal

import cbor2

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_HASH_ALGO",
    "HASH_ALGOS",
    "BlockHasher",
    "HashAlgo",
    "external_hash",
    "none_hash",
    "sha256_cbor",
]

HashAlgo = Literal["sha256_cbor"]
HASH_ALGOS: Final[tuple[HashAlgo, ...]] = ("sha256_cbor",)
DEFAULT_HASH_ALGO: Final[HashAlgo] = "sha256_cbor"
DEFAULT_BLOCK_SIZE: Final = 16
# Blocks remembered by :meth:`BlockHasher.hashes` (about 200 bytes each: 16 MB at the default).
DEFAULT_BLOCK_CACHE: Final = 65_536
_U64: Final = (1 << 64) - 1


def sha256_cbor(obj: object) -> bytes:
    """``vllm.utils.hashing.sha256_cbor``: SHA-256 of the canonical CBOR encoding of ``obj``."""
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


def none_hash(seed: str, algo: HashAlgo = DEFAULT_HASH_ALGO) -> bytes:
    """``NONE_HASH`` of a server started with ``PYTHONHASHSEED=seed`` (``init_none_hash``)."""
    if algo != "sha256_cbor":
        raise ValueError(f"unknown block hash algorithm {algo!r}; expected one of {HASH_ALGOS}")
    return sha256_cbor(seed)


class _CborUints(dict[int, bytes]):
    """Canonical CBOR of each unsigned int seen (token ids repeat: a vocabulary's worth at most), so a block's
    encoding is one ``b"".join`` instead of a general-purpose encoder call."""

    __slots__ = ()
    MAX_ENTRIES: Final = 1 << 20

    def __missing__(self, value: int) -> bytes:
        if value < 0 or value > _U64:
            raise ValueError("token ids must be unsigned 64-bit integers")
        if value < 24:
            encoded = bytes((value,))
        elif value < 0x100:
            encoded = b"\x18" + value.to_bytes(1, "big")
        elif value < 0x10000:
            encoded = b"\x19" + value.to_bytes(2, "big")
        elif value < 0x100000000:
            encoded = b"\x1a" + value.to_bytes(4, "big")
        else:
            encoded = b"\x1b" + value.to_bytes(8, "big")
        if len(self) >= self.MAX_ENTRIES:
            self.clear()
        self[value] = encoded
        return encoded


_UINTS = _CborUints()


def _cbor_head(major: int, length: int) -> bytes:
    """The canonical CBOR head of a byte string (major 2) or array (major 4) of ``length`` items."""
    if length < 24:
        return bytes(((major << 5) | length,))
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if length < 1 << (8 * size):
            return bytes(((major << 5) | extra,)) + length.to_bytes(size, "big")
    raise ValueError("length too large")


def external_hash(block_hash: bytes | int) -> int:
    """The 64-bit integer a KV event carries for a block (``maybe_convert_block_hash``); an integer (already
    converted by the server) is returned as it is."""
    if isinstance(block_hash, int):
        return block_hash & _U64
    return int.from_bytes(block_hash[-8:], "big")


class BlockHasher:
    """Chained block hashes of one server configuration (algorithm, ``PYTHONHASHSEED``, block size).

    :meth:`chain` is pure; :meth:`hashes` remembers up to ``cache_blocks`` blocks (LRU) keyed by their parent
    digest and tokens, so a prompt that repeats or extends an earlier one hashes only its new blocks.
    """

    __slots__ = ("_cache", "algo", "block_size", "cache_blocks", "cache_hits", "cache_misses", "none_hash")

    def __init__(
        self,
        seed: str,
        *,
        algo: HashAlgo = DEFAULT_HASH_ALGO,
        block_size: int = DEFAULT_BLOCK_SIZE,
        cache_blocks: int = DEFAULT_BLOCK_CACHE,
    ) -> None:
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        if cache_blocks < 0:
            raise ValueError("cache_blocks must be >= 0")
        self.algo: HashAlgo = algo
        self.block_size = block_size
        self.none_hash = none_hash(seed, algo)
        self.cache_blocks = cache_blocks
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    def chain(self, tokens: Sequence[int], parent: bytes | None = None, start: int = 0) -> list[bytes]:
        """Digests of the full blocks of ``tokens[start:]`` (``start`` on a block boundary), the first one
        chained to ``parent`` (``None``: the prompt's first block)."""
        size = self.block_size
        digest = self.none_hash if parent is None else parent
        out: list[bytes] = []
        end = start + (len(tokens) - start) // size * size
        if end <= start:
            return out
        # sha256_cbor((parent, tuple(block), None)) with the CBOR written here: a 3-array, the parent as a byte
        # string, the block as an array of unsigned ints, null. A test checks it against cbor2 (canonical).
        encoded = list(map(_UINTS.__getitem__, tokens[start:end]))
        parent_head = _cbor_head(2, len(digest))
        block_head = _cbor_head(4, size)
        sha256, join = hashlib.sha256, b"".join
        for begin in range(0, end - start, size):
            digest = sha256(
                b"\x83" + parent_head + digest + block_head + join(encoded[begin : begin + size]) + b"\xf6"
            ).digest()
            out.append(digest)
        return out

    def hashes(self, tokens: Sequence[int]) -> list[int]:
        """The external (64-bit) hashes of the full blocks of ``tokens``, as the server's ``BlockStored``
        events carry them. Cached: see the class docstring."""
        if self.cache_blocks == 0:
            return [external_hash(d) for d in self.chain(tokens)]
        size = self.block_size
        cache = self._cache
        digest = self.none_hash
        out: list[int] = []
        hits = 0
        for begin in range(0, len(tokens) - size + 1, size):
            block = tuple(tokens[begin : begin + size])
            key = hash((digest, block))  # collisions (2**-64) only mislead routing, never a server
            found = cache.get(key)
            if found is None:
                found = self.chain(block, digest)[0]
                cache[key] = found
                if len(cache) > self.cache_blocks:
                    cache.popitem(last=False)
            else:
                hits += 1
                cache.move_to_end(key)
            digest = found
            out.append(int.from_bytes(found[-8:], "big"))
        self.cache_hits += hits
        self.cache_misses += len(out) - hits
        return out
