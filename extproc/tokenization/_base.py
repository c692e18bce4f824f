"""The tokenizer seams: what the router needs (:class:`Tokenizer`) and what an in-process tokenizer provides
(:class:`TextTokenizer`), plus :class:`LocalTokenizer`, which turns the second into the first.

vLLM tokenizes the two OpenAI request kinds differently, and a router that wants the backend's token ids must
do the same (``vllm/entrypoints/openai/protocol.py``: ``CompletionRequest`` and ``TokenizeCompletionRequest``
default ``add_special_tokens`` to True, ``ChatCompletionRequest`` and ``TokenizeChatRequest`` to False):

* a completion ``prompt`` is encoded with the tokenizer's special tokens (a BOS for Llama models);
* chat ``messages`` are rendered with the model's chat template (``add_generation_prompt=True``) and the text
  is encoded *without* special tokens, since the template writes the BOS itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["ChatTemplate", "LocalTokenizer", "Messages", "TextTokenizer", "Tokenizer", "TokenizerConfigError"]

Messages = Sequence[Mapping[str, Any]]


class TokenizerConfigError(ValueError):
    """A tokenizer cannot be built: a bad ``--tokenizer`` spec, a missing or malformed tokenizer file."""


@runtime_checkable
class Tokenizer(Protocol):
    """The token ids a backend computes for a request. Never raises: ``None`` means "no answer" (a malformed
    request, a tokenizer service that failed or timed out); each implementation counts its failures."""

    async def prompt_ids(self, prompt: str) -> list[int] | None:
        """Ids of a completion prompt, as the backend's ``/v1/completions`` tokenizes it."""
        ...

    async def chat_ids(self, messages: Messages) -> list[int] | None:
        """Ids of chat messages, as the backend's ``/v1/chat/completions`` tokenizes them."""
        ...

    async def aclose(self) -> None:
        """Release connections (a no-op for in-process tokenizers)."""
        ...


class ChatTemplate(Protocol):
    """Chat messages -> the text the backend tokenizes. Raises ``ValueError``/``TypeError``/``KeyError`` on
    messages the template cannot render."""

    def render(self, messages: Messages, *, add_generation_prompt: bool = True) -> str: ...


class TextTokenizer(Protocol):
    """An in-process tokenizer: text -> ids, with or without the model's special tokens (BOS ...)."""

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]: ...


class LocalTokenizer:
    """A :class:`Tokenizer` from an in-process :class:`TextTokenizer` and a :class:`ChatTemplate`.

    Encoding runs on the event loop: the approximate tokenizer and Hugging Face's (Rust) ``tokenizers`` take
    well under a millisecond per thousand tokens. ``errors`` counts requests that could not be tokenized.
    """

    def __init__(self, text: TextTokenizer, template: ChatTemplate) -> None:
        self.text = text
        self.template = template
        self.errors = 0

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.text.encode(prompt, add_special_tokens=True)

    def encode_chat(self, messages: Messages) -> list[int]:
        return self.text.encode(self.template.render(messages, add_generation_prompt=True), add_special_tokens=False)

    async def prompt_ids(self, prompt: str) -> list[int] | None:
        try:
            return self.encode_prompt(prompt)
        except Exception:
            self.errors += 1
            return None

    async def chat_ids(self, messages: Messages) -> list[int] | None:
        try:
            return self.encode_chat(messages)
        except Exception:  # malformed messages, a template that raises (raise_exception), ...
            self.errors += 1
            return None

    async def aclose(self) -> None:
        return None
