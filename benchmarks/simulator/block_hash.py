"""Chained block hashes for the prefix cache: the simulator's own (BLAKE2b) or vLLM's ``sha256_cbor``.

A full block's hash chains its parent block's hash and its token ids, so a block only matches when the whole
prefix before it matches too. Two algorithms:

* ``"blake2b"`` (the default, the simulator's historical one): BLAKE2b-128 over ``parent || tokens`` (tokens as
  little-endian uint32), root parent 16 zero bytes. Identical in every process.
* ``"sha256_cbor"``: vLLM's ``--prefix-caching-hash-algo sha256_cbor``. ``hash_block_tokens`` in
  ``vllm/v1/core/kv_cache_utils.py`` hashes the tuple ``(parent_hash, tuple(token_ids), extra_keys)`` with
  ``sha256_cbor`` (``vllm/utils/hashing.py``: SHA-256 of ``cbor2.dumps(obj, canonical=True)``); the first
  block's parent is ``NONE_HASH = sha256_cbor(PYTHONHASHSEED)`` (``init_none_hash``). vLLM draws a random
  ``NONE_HASH`` when ``PYTHONHASHSEED`` is unset; the simulator then derives it from its seeded RNG instead, so
  runs stay reproducible. ``extra_keys`` is ``None`` (no LoRA, multimodal input or ``cache_salt``).

KV events carry hashes as vLLM's ``ExternalBlockHash`` (``maybe_convert_block_hash``): with
``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`` (vLLM's default) the low 64 bits of the big-endian integer of the
digest, else the raw digest bytes (:func:`external_hash`). A router that tokenizes like the simulator can
recompute the same ids with :class:`Sha256CborHasher` and the same seed.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from typing import Literal, Protocol

__all__ = [
    "HASH_ALGOS",
    "BlockHasher",
    "HashAlgo",
    "Sha256CborHasher",
    "blake2b_block_hashes",
    "external_hash",
    "make_hasher",
]

HashAlgo = Literal["blake2b", "sha256_cbor"]
HASH_ALGOS: tuple[HashAlgo, ...] = ("blake2b", "sha256_cbor")
_ROOT_HASH = b"\x00" * 16
_U64 = (1 << 64) - 1


class BlockHasher(Protocol):
    def __call__(self, tokens: Sequence[int], block_size: int, limit: int | None = None,
                 extra_keys: tuple[str, ...] | None = None) -> list[bytes]:
        """Chained hashes of the full blocks of ``tokens`` (at most ``limit`` blocks). ``extra_keys``: vLLM's
        per-block extra keys, here a LoRA adapter's name (``_gen_lora_extra_hash_keys`` in
        vllm/v1/core/kv_cache_utils.py): an adapter's blocks never match another adapter's or the base model's."""
        ...


def _num_blocks(tokens: Sequence[int], block_size: int, limit: int | None) -> int:
    n = len(tokens) // block_size
    return n if limit is None else min(n, limit)


def blake2b_block_hashes(tokens: Sequence[int], block_size: int, limit: int | None = None,
                         extra_keys: tuple[str, ...] | None = None) -> list[bytes]:
    """The simulator's hash. Token ids must fit in 32 unsigned bits (the HTTP layer validates client ids).
    Extra keys seed the chain's root (every block of the chain depends on them)."""
    out: list[bytes] = []
    parent = _ROOT_HASH if not extra_keys else hashlib.blake2b(
        "\x00".join(extra_keys).encode(), digest_size=16, person=b"extra-keys").digest()
    for b in range(_num_blocks(tokens, block_size, limit)):
        chunk = array("I", tokens[b * block_size : (b + 1) * block_size]).tobytes()
        parent = hashlib.blake2b(parent + chunk, digest_size=16).digest()
        out.append(parent)
    return out


class Sha256CborHasher:
    """vLLM's ``sha256_cbor`` block hash with ``NONE_HASH = sha256_cbor(seed)`` (``seed`` = ``PYTHONHASHSEED``)."""

    __slots__ = ("none_hash",)

    def __init__(self, seed: str | None = None, *, none_hash: bytes | None = None) -> None:
        if none_hash is None:
            if seed is None:
                raise ValueError("sha256_cbor needs a seed (PYTHONHASHSEED) or an explicit none_hash")
            none_hash = self.sha256_cbor(seed)
        self.none_hash = none_hash

    @staticmethod
    def sha256_cbor(obj: object) -> bytes:
        import cbor2  # only needed for this algorithm

        return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()

    def __call__(self, tokens: Sequence[int], block_size: int, limit: int | None = None,
                 extra_keys: tuple[str, ...] | None = None) -> list[bytes]:
        out: list[bytes] = []
        parent = self.none_hash
        for b in range(_num_blocks(tokens, block_size, limit)):
            block = tuple(int(t) for t in tokens[b * block_size : (b + 1) * block_size])
            # vLLM's hash_block_tokens: (parent, token ids, extra keys or None) for every block.
            parent = self.sha256_cbor((parent, block, extra_keys or None))
            out.append(parent)
        return out


def make_hasher(algo: HashAlgo, *, seed: str | None = None, fallback_seed: bytes | None = None) -> BlockHasher:
    """``"blake2b"`` or ``"sha256_cbor"`` (``seed`` as ``PYTHONHASHSEED``; without one ``fallback_seed`` bytes
    become ``NONE_HASH``, as vLLM's random one would)."""
    if algo == "blake2b":
        return blake2b_block_hashes
    if algo == "sha256_cbor":
        if seed is not None:
            return Sha256CborHasher(seed)
        if fallback_seed is None:
            raise ValueError("sha256_cbor needs a seed")
        return Sha256CborHasher(none_hash=hashlib.sha256(fallback_seed).digest())
    raise ValueError(f"unknown block hash algorithm {algo!r}; expected one of {HASH_ALGOS}")


def external_hash(block_hash: bytes, as_int: bool = True) -> int | bytes:
    """vLLM's ``maybe_convert_block_hash``: the low 64 bits of the big-endian digest, or the digest itself."""
    return int.from_bytes(block_hash, "big") & _U64 if as_int else block_hash
