"""A request's prompt -> its token count and the block hashes its server computes, cheaply for growing prompts.

Every routed request may pass through :class:`PromptHasher`, and an agent workflow re-sends a prompt that
extends the previous one. Tokenizing 4k tokens (~550 us with the approximate tokenizer) and hashing 256
blocks with ``sha256_cbor`` (~600 us) would cost more than routing itself, so the text is cut into chunks of
about ``chunk_chars`` characters at points where the tokenizer is known to split (:func:`cut_pattern`), and
each chunk's token ids and the hashes of the blocks that end in it are remembered (LRU), keyed by the chain
of the chunk texts before it. A prompt whose start was seen tokenizes and hashes only its new chunks.

Cut points must not change the token ids (the ids of ``a + b`` must be the ids of ``a`` then those of ``b``):

* the approximate tokenizer splits before every whitespace that follows a non-space (its words keep their
  leading whitespace), so any such point is exact;
* a Hugging Face tokenizer extracts special added tokens (``<|eot_id|>`` ...) before normalizing and
  pre-tokenizing, so the point before one is exact for most models - but not all (a normalizer that
  prepends a space to every segment, a post-processor that appends an EOS). So a probe checks the cut at
  construction, and one chunked encoding in ``verify_every`` is compared with a whole one; a mismatch turns
  chunking off for good (``verify_mismatches``).

Other tokenizers (vLLM's ``/tokenize``) tokenize the whole prompt and only the block hashes are cached
(:meth:`BlockHasher.hashes`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from extproc.tokenization._base import LocalTokenizer, Tokenizer
from extproc.tokenization._local import ApproxTokenizer, HFTokenizer, _ApproxText, _HFText
from extproc.tokenization.block_hash import BlockHasher, external_hash

__all__ = [
    "DEFAULT_CHUNK_CACHE",
    "DEFAULT_CHUNK_CHARS",
    "DEFAULT_VERIFY_EVERY",
    "PromptBlocks",
    "PromptHasher",
    "cut_pattern",
]

DEFAULT_CHUNK_CHARS: Final = 512
# Chunks remembered (each holds its ids and hashes: ~1.5 KB for 512 characters; 16k chunks ~ 25 MB).
DEFAULT_CHUNK_CACHE: Final = 16_384
DEFAULT_VERIFY_EVERY: Final = 256

_APPROX_CUT = re.compile(r"(?<=\S)\s")
_Entry = tuple[tuple[int, ...], tuple[int, ...], bytes | None]  # chunk ids, hashes of blocks ending in it, last digest


@dataclass(frozen=True, slots=True)
class PromptBlocks:
    """The prompt's token count and the external hashes of its full blocks, in order."""

    tokens: int
    hashes: Sequence[int]


def cut_pattern(tokenizer: Tokenizer) -> re.Pattern[str] | None:
    """Where ``tokenizer`` may cut a text without changing its ids (``None``: nowhere known)."""
    if not isinstance(tokenizer, LocalTokenizer):
        return None
    text = tokenizer.text
    if isinstance(tokenizer, ApproxTokenizer) and isinstance(text, _ApproxText):
        return _APPROX_CUT
    if isinstance(tokenizer, HFTokenizer) and isinstance(text, _HFText):
        specials = sorted(
            (t.content for t in text._tokenizer.get_added_tokens_decoder().values() if t.special and t.content),
            key=len,
            reverse=True,
        )
        if not specials:
            return None
        pattern = re.compile("|".join(re.escape(s) for s in specials))
        probe = f"Hello world.{specials[0]}\nNext part of the prompt"
        cut = probe.index(specials[0])
        for special in (True, False):
            whole = text.encode(probe, add_special_tokens=special)
            split = text.encode(probe[:cut], add_special_tokens=special) + text.encode(
                probe[cut:], add_special_tokens=False
            )
            if whole != split:
                return None
        return pattern
    return None


class PromptHasher:
    """``(prompt_text, messages)`` -> :class:`PromptBlocks`, tokenizing like the servers (``tokenizer``) and
    hashing like them (``hasher``). Never raises: ``None`` when the request cannot be tokenized (``errors``)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        hasher: BlockHasher,
        *,
        chunk_chars: int = DEFAULT_CHUNK_CHARS,
        cache_chunks: int = DEFAULT_CHUNK_CACHE,
        verify_every: int = DEFAULT_VERIFY_EVERY,
    ) -> None:
        if chunk_chars < 1 or cache_chunks < 1 or verify_every < 1:
            raise ValueError("chunk_chars, cache_chunks and verify_every must be >= 1")
        self.tokenizer = tokenizer
        self.hasher = hasher
        self.chunk_chars = chunk_chars
        self.cache_chunks = cache_chunks
        self.verify_every = verify_every
        self.cut: re.Pattern[str] | None = cut_pattern(tokenizer)
        self._cache: OrderedDict[int, _Entry] = OrderedDict()
        self._encodings = 0
        # Counters (monotonic).
        self.errors = 0
        self.chunk_hits = 0
        self.chunk_misses = 0
        self.verify_mismatches = 0

    async def blocks(self, prompt_text: str, messages: Sequence[Any] | None = None) -> PromptBlocks | None:
        """The blocks of a completion ``prompt_text`` or, when ``messages`` is not None, of the chat."""
        tokenizer = self.tokenizer
        try:
            if self.cut is not None and isinstance(tokenizer, LocalTokenizer):
                if messages is not None:
                    text = tokenizer.template.render(messages, add_generation_prompt=True)
                    return self.text_blocks(text, add_special_tokens=False)
                return self.text_blocks(prompt_text, add_special_tokens=True)
            ids = await (tokenizer.chat_ids(messages) if messages is not None else tokenizer.prompt_ids(prompt_text))
        except Exception:  # malformed messages, a template that raises, a broken tokenizer
            self.errors += 1
            return None
        if ids is None:
            self.errors += 1
            return None
        return PromptBlocks(len(ids), self.hasher.hashes(ids))

    def text_blocks(self, text: str, *, add_special_tokens: bool) -> PromptBlocks:
        """Blocks of ``text`` encoded by the local tokenizer, chunk by chunk (see the module docstring)."""
        tokenizer = self.tokenizer
        assert isinstance(tokenizer, LocalTokenizer) and self.cut is not None
        encode = tokenizer.text.encode
        hasher, cache, cut, size = self.hasher, self._cache, self.cut, self.chunk_chars
        block_size = hasher.block_size
        tokens: list[int] = []
        hashes: list[int] = []
        digest: bytes | None = None
        key = hash((add_special_tokens, block_size))
        pos, end_of_text = 0, len(text)
        missed = False
        while pos < end_of_text:
            end = end_of_text
            if end_of_text - pos > size:
                found = cut.search(text, pos + size)
                if found is not None:
                    end = found.start()
            chunk = text[pos:end]
            key = hash((key, chunk))
            entry = cache.get(key)
            if entry is None:
                missed = True
                ids = encode(chunk, add_special_tokens=add_special_tokens and pos == 0)
                tokens.extend(ids)
                new = hasher.chain(tokens, digest, start=len(hashes) * block_size)
                if new:
                    digest = new[-1]
                entry = (tuple(ids), tuple(external_hash(d) for d in new), digest)
                cache[key] = entry
                if len(cache) > self.cache_chunks:
                    cache.popitem(last=False)
                self.chunk_misses += 1
            else:
                cache.move_to_end(key)
                tokens.extend(entry[0])
                digest = entry[2]
                self.chunk_hits += 1
            hashes.extend(entry[1])
            pos = end
        if missed:
            self._encodings += 1
            due = self._encodings % self.verify_every == 0
            if due and encode(text, add_special_tokens=add_special_tokens) != tokens:
                self.verify_mismatches += 1
                self.cut = None  # this tokenizer does not split where we thought: tokenize whole prompts from now on
                self._cache.clear()
                ids = encode(text, add_special_tokens=add_special_tokens)
                return PromptBlocks(len(ids), hasher.hashes(ids))
        return PromptBlocks(len(tokens), hashes)
