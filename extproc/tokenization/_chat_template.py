"""A model's chat template (the Jinja2 ``chat_template`` of its ``tokenizer_config.json``), rendered as Hugging
Face transformers renders it (``transformers/utils/chat_template_utils.py``): an immutable sandboxed Jinja2
environment with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` filter that
keeps non-ASCII characters, the ``raise_exception`` and ``strftime_now`` globals, and the tokenizer's special
tokens (``bos_token``, ``eos_token`` ...) as variables.

Message content is given to the template the way vLLM does (``vllm/entrypoints/chat_utils.py``,
``--chat-template-content-format auto``): a template that loops over ``message['content']`` gets the OpenAI
list of parts; any other gets a string, the text parts joined by newlines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NoReturn

from extproc.tokenization._base import Messages, TokenizerConfigError

__all__ = ["SPECIAL_TOKEN_KEYS", "JinjaChatTemplate", "load_tokenizer_config"]

ContentFormat = Literal["string", "openai"]

# The special tokens transformers passes to a chat template (``SpecialTokensMixin.SPECIAL_TOKENS_ATTRIBUTES``).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# `{% for part in message['content'] %}` / `message.content`: the template walks the parts itself.
_LOOPS_OVER_CONTENT = re.compile(r"\{%-?\s*for\s+\w+\s+in\s+\w+(?:\[\s*['\"]content['\"]\s*\]|\.content\b)")


def load_tokenizer_config(path: str | Path) -> dict[str, Any]:
    """The JSON object of a ``tokenizer_config.json``; :class:`TokenizerConfigError` naming the file otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise TokenizerConfigError(f"cannot read tokenizer config {str(path)!r}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise TokenizerConfigError(f"tokenizer config {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerConfigError(f"tokenizer config {str(path)!r} must be a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    """A special token of a tokenizer config: a string, or an ``AddedToken`` object ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _raise_exception(message: str) -> NoReturn:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _string_content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping):
                raise TypeError("content parts must be objects")
            if part.get("type") == "text":
                if not isinstance(part.get("text"), str):
                    raise TypeError("a text content part needs a string 'text'")
                texts.append(part["text"])
        return "\n".join(texts)
    raise TypeError("content must be a string, null or a list of parts")


class JinjaChatTemplate:
    """A :class:`~extproc.tokenization.ChatTemplate` from a Jinja2 source and the tokenizer's special tokens."""

    def __init__(
        self, source: str, special_tokens: Mapping[str, str] | None = None, content_format: ContentFormat | None = None
    ) -> None:
        from jinja2 import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise TokenizerConfigError(f"chat template does not compile: {exc}") from exc
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self.content_format: ContentFormat = content_format or (
            "openai" if _LOOPS_OVER_CONTENT.search(source) else "string"
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, origin: str = "tokenizer config") -> JinjaChatTemplate:
        """The template of a ``tokenizer_config.json`` object (``chat_template`` and the special tokens)."""
        source = config.get("chat_template")
        if isinstance(source, list):  # several named templates: [{"name": "default", "template": "..."}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, Mapping)}
            source = named.get("default")
        if not isinstance(source, str) or not source:
            raise TokenizerConfigError(f"{origin} has no 'chat_template' (a Jinja2 string)")
        special = {key: text for key in SPECIAL_TOKEN_KEYS if (text := _token_text(config.get(key))) is not None}
        return cls(source, special)

    def render(self, messages: Messages, *, add_generation_prompt: bool = True) -> str:
        if self.content_format == "string":
            messages = [{**m, "content": _string_content(m.get("content"))} for m in messages]
        text = self._template.render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
        )
        return str(text)
