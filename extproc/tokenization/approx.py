"""The approximate tokenizer: a deterministic stand-in for a BPE tokenizer, and its Llama-3-style chat template.

It is the default of ``--tokenizer`` and the tokenizer of the vLLM simulator (``benchmarks/simulator``), which
delegates to this module, so a router using it computes exactly the simulator's token ids:

* Special tokens (``<|eot_id|>`` ...) are one token each; runs of newlines are one token; other text is split
  into words that keep their leading horizontal whitespace (``" world"``), as GPT/Llama pre-tokenizers do.
* Each word is cut into pieces of at most :data:`CHARS_PER_TOKEN` (4) characters - about the ~4 characters per
  token that Llama-3's tokenizer gives on English text.
* A token id is ``zlib.crc32`` of the piece's UTF-8 bytes: a stable 32-bit value, the same in every process
  (Python's ``hash(str)`` is salted per process and must never be used here).

The same text therefore always gives the same ids, and a prompt that extends another at a word boundary
extends its token ids too - which is what makes prefix caching observable. No BOS token is ever added: the
chat template writes ``<|begin_of_text|>`` itself, and a completion prompt is tokenized as it is.

This module uses the standard library only and imports nothing from its package:
``benchmarks/simulator/lmcache_worker.py`` loads it by file path in LMCache's virtualenv, which lacks our
dependencies.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_TOKENIZER_CONFIG",
    "apply_chat_template",
    "encode",
    "message_text",
    "pieces",
    "token_id",
]

CHARS_PER_TOKEN: Final = 4

# A special token, a run of newlines, an optionally-indented word, or trailing horizontal whitespace.
_SPECIAL = r"<\|[A-Za-z0-9_]+\|>"
_PRETOKEN = re.compile(rf"{_SPECIAL}|\n+|[^\S\n]*(?:(?!{_SPECIAL})\S)+|[^\S\n]+")
_SPECIAL_RE = re.compile(_SPECIAL)

# :func:`apply_chat_template` as data, in the shape of a Hugging Face ``tokenizer_config.json``: rendered like
# transformers renders a chat template (``extproc.tokenization.JinjaChatTemplate``) it gives the same text, which
# a test checks. Content parts are joined without a separator, as :func:`message_text` does.
DEFAULT_TOKENIZER_CONFIG: Final[Mapping[str, str]] = {
    "bos_token": "<|begin_of_text|>",
    "eos_token": "<|eot_id|>",
    "chat_template": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% elif message['content'] is not none %}"
        "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
        "{% endif %}"
        "{{ '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
}


def token_id(piece: str) -> int:
    """The id of one token's text."""
    return zlib.crc32(piece.encode("utf-8"))


@lru_cache(maxsize=1 << 16)
def _word(word: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if _SPECIAL_RE.fullmatch(word) or word.startswith("\n"):
        parts: tuple[str, ...] = (word,)
    else:
        parts = tuple(word[i : i + CHARS_PER_TOKEN] for i in range(0, len(word), CHARS_PER_TOKEN))
    return parts, tuple(token_id(p) for p in parts)


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
    header. Raises ``TypeError``/``KeyError`` on a malformed message (the simulator answers 400)."""
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
