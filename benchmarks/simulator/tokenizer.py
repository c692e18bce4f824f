"""The simulator's tokenizer: the product's approximate tokenizer, plus the simulator's output filler.

The algorithm (about 4 characters per token, crc32 ids, a Llama-3-style chat template) lives in
:mod:`extproc.tokenization.approx`, the router's default ``--tokenizer approx``, so the router and the simulator
compute the same ids by construction; see that module for the rules. This module re-exports it under the
names the simulator uses and adds what only the simulator needs: :func:`filler_output`, the generated tokens.

The simulator may import the product; the product never imports ``benchmarks``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from extproc.tokenization import ApproxTokenizer
from extproc.tokenization.approx import CHARS_PER_TOKEN, apply_chat_template, encode, message_text, pieces, token_id

__all__ = [
    "CHARS_PER_TOKEN",
    "FILLER_WORDS",
    "TOKENIZER",
    "apply_chat_template",
    "count_tokens",
    "detokenize_pieces",
    "encode",
    "filler_output",
    "message_text",
    "pieces",
]

# The simulator's tokenizer behind the product's Tokenizer interface (what its /tokenize answers with).
TOKENIZER = ApproxTokenizer()

# Output filler: words of at most 3 letters, so " " + word is exactly one token and re-tokenizing generated
# text gives back exactly the generated token ids (the next turn of a conversation can then hit the cache).
FILLER_WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "in", "is", "it", "for", "on", "as", "we", "by", "at", "an", "be", "or",
    "are", "was", "can", "all", "one", "new", "use", "may", "two", "way", "our", "out", "see", "now",
    "map", "key", "row", "set", "log", "run", "sum", "add", "end", "top",
)  # fmt: skip


def count_tokens(text: str) -> int:
    return len(encode(text))


def detokenize_pieces(token_pieces: Iterable[str]) -> str:
    return "".join(token_pieces)


@lru_cache(maxsize=1)
def _filler_table() -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...], tuple[int, ...]]:
    first = FILLER_WORDS
    rest = tuple(" " + w for w in FILLER_WORDS)
    return first, tuple(token_id(w) for w in first), rest, tuple(token_id(w) for w in rest)


def filler_output(choices: Sequence[int]) -> tuple[list[int], list[str]]:
    """Generated tokens for the given word choices (indices into :data:`FILLER_WORDS`): ``(ids, pieces)``.

    One word is one token, so the output is exactly ``len(choices)`` tokens, and ``encode("".join(pieces))``
    equals ``ids``.
    """
    first, first_ids, rest, rest_ids = _filler_table()
    ids: list[int] = []
    texts: list[str] = []
    for i, c in enumerate(choices):
        if i == 0:
            ids.append(first_ids[c])
            texts.append(first[c])
        else:
            ids.append(rest_ids[c])
            texts.append(rest[c])
    return ids, texts
