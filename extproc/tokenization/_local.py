"""In-process tokenizers: the approximate one (the default, the simulator's) and a model's own Hugging Face
tokenizer read from local files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from extproc.tokenization import approx
from extproc.tokenization._base import ChatTemplate, LocalTokenizer, Messages, TokenizerConfigError
from extproc.tokenization._chat_template import JinjaChatTemplate, load_tokenizer_config

if TYPE_CHECKING:
    import tokenizers

__all__ = ["ApproxTokenizer", "HFTokenizer"]


class _ApproxText:
    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return approx.encode(text)  # it has no BOS to add: the chat template writes <|begin_of_text|> itself


class _ApproxChatTemplate:
    """:func:`extproc.tokenization.approx.apply_chat_template`: the same text as rendering
    ``DEFAULT_TOKENIZER_CONFIG`` (a test checks), without Jinja2 on the hot path."""

    def render(self, messages: Messages, *, add_generation_prompt: bool = True) -> str:
        return approx.apply_chat_template(messages, add_generation_prompt)


class ApproxTokenizer(LocalTokenizer):
    """The deterministic ~4-characters-per-token tokenizer (:mod:`extproc.tokenization.approx`).

    It matches the vLLM simulator exactly and a real model only roughly (counts, not ids). ``template``
    replaces the built-in Llama-3-style chat template (e.g. one read from a ``tokenizer_config.json``).
    """

    def __init__(self, template: ChatTemplate | None = None) -> None:
        super().__init__(_ApproxText(), template or _ApproxChatTemplate())


class _HFText:
    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)


class HFTokenizer(LocalTokenizer):
    """A model's own tokenizer: its ``tokenizer.json`` (Hugging Face ``tokenizers``, no torch, no transformers)
    and the chat template of its ``tokenizer_config.json``. Only local files are read; nothing is downloaded."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, template: ChatTemplate) -> None:
        super().__init__(_HFText(tokenizer), template)

    @classmethod
    def from_files(cls, tokenizer_json: str | Path, config_json: str | Path | None = None) -> HFTokenizer:
        """``tokenizer_json`` may be the file or the directory holding ``tokenizer.json`` (and, then by default,
        ``tokenizer_config.json``). Raises :class:`TokenizerConfigError` naming the file at fault."""
        path = Path(tokenizer_json)
        if path.is_dir():
            if config_json is None:
                config_json = path / "tokenizer_config.json"
            path = path / "tokenizer.json"
        if not path.is_file():
            raise TokenizerConfigError(f"tokenizer file {str(path)!r} does not exist")
        if config_json is None:
            config_json = path.with_name("tokenizer_config.json")
        config_path = Path(config_json)
        if not config_path.is_file():
            raise TokenizerConfigError(
                f"tokenizer config {str(config_path)!r} does not exist (the chat template comes from it; "
                "name it with config=...)"
            )
        import tokenizers

        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerConfigError(f"tokenizer file {str(path)!r} cannot be loaded: {exc}") from exc
        template = JinjaChatTemplate.from_config(load_tokenizer_config(config_path), origin=f"{str(config_path)!r}")
        return cls(tokenizer, template)
