"""A deterministic stand-in for a BPE tokenizer, and the chat template.

The simulator never runs a model, but token counts drive everything it models (prefill cost, KV blocks, prefix
hits, usage), so they must be realistic and identical across processes:

* Special tokens (``<|eot_id|>`` ...) are one token each; runs of newlines are one token; other text is split
  into words that keep their leading horizontal whitespace (``" world"``), as GPT/Llama pre-tokenizers do.
* Each word is cut into pieces of at most :data:`CHARS_PER_TOKEN` (4) characters - about the ~4 characters per
  token that Llama-3's tokenizer gives on English text.
* A token id is ``zlib.crc32`` of the piece's UTF-8 bytes: a stable 32-bit value, the same in every process
  (Python's ``hash(str)`` is salted per process and must never be used here).

The same text therefore always gives the same ids, and a prompt that extends another at a word boundary
extends its token ids too - which is what makes prefix caching observable.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "FILLER_WORDS",
    "apply_chat_template",
    "count_tokens",
    "detokenize_pieces",
    "encode",
    "filler_output",
    "message_text",
    "pieces",
]

CHARS_PER_TOKEN = 4

# A special token, a run of newlines, an optionally-indented word, or trailing horizontal whitespace.
_SPECIAL = r"<\|[A-Za-z0-9_]+\|>"
_PRETOKEN = re.compile(rf"{_SPECIAL}|\n+|[^\S\n]*(?:(?!{_SPECIAL})\S)+|[^\S\n]+")
_SPECIAL_RE = re.compile(_SPECIAL)

# Output filler: words of at most 3 letters, so " " + word is exactly one token and re-tokenizing generated
# text gives back exactly the generated token ids (the next turn of a conversation can then hit the cache).
FILLER_WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "in", "is", "it", "for", "on", "as", "we", "by", "at", "an", "be", "or",
    "are", "was", "can", "all", "one", "new", "use", "may", "two", "way", "our", "out", "see", "now",
    "map", "key", "row", "set", "log", "run", "sum", "add", "end", "top",
)  # fmt: skip


def _token_id(piece: str) -> int:
    return zlib.crc32(piece.encode("utf-8"))


@lru_cache(maxsize=1 << 16)
def _word(word: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if _SPECIAL_RE.fullmatch(word) or word.startswith("\n"):
        parts: tuple[str, ...] = (word,)
    else:
        parts = tuple(word[i : i + CHARS_PER_TOKEN] for i in range(0, len(word), CHARS_PER_TOKEN))
    return parts, tuple(_token_id(p) for p in parts)


def encode(text: str) -> list[int]:
    """Token ids of ``text`` (no BOS token is added)."""
    ids: list[int] = []
    for word in _PRETOKEN.findall(text):
        ids.extend(_word(word)[1])
    return ids


def pieces(text: str) -> list[str]:
    """The text of each token of ``text``; ``"".join(pieces(t)) == t``."""
    out: list[str] = []
    for word in _PRETOKEN.findall(text):
        out.extend(_word(word)[0])
    return out


def count_tokens(text: str) -> int:
    return len(encode(text))


def detokenize_pieces(token_pieces: Iterable[str]) -> str:
    return "".join(token_pieces)


def message_text(content: Any) -> str:
    """Text of an OpenAI message ``content``: a string, ``None``, or a list of ``{"type": "text"}`` parts.

    Non-text parts (images, audio) are skipped. Raises ``TypeError`` on any other shape.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, Mapping):
                raise TypeError("content parts must be objects")
            if part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise TypeError("a text content part needs a string 'text'")
                texts.append(text)
        return "".join(texts)
    raise TypeError("content must be a string, null or a list of parts")


def apply_chat_template(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """A Llama-3-style chat template: one header + content + ``<|eot_id|>`` per message, then the assistant
    header. Raises ``TypeError``/``KeyError`` on a malformed message (the HTTP layer turns that into a 400)."""
    parts = ["<|begin_of_text|>"]
    for message in messages:
        role = message["role"]
        if not isinstance(role, str):
            raise TypeError("role must be a string")
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{message_text(message.get('content'))}")
        parts.append("<|eot_id|>")
    if add_generation_prompt:
        parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


@lru_cache(maxsize=1)
def _filler_table() -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...], tuple[int, ...]]:
    first = FILLER_WORDS
    rest = tuple(" " + w for w in FILLER_WORDS)
    return first, tuple(_token_id(w) for w in first), rest, tuple(_token_id(w) for w in rest)


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
