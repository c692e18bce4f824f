"""``--tokenizer`` specs: which tokenizer computes the backends' token ids.

Syntax (``KIND[:TARGET][,key=value]...``)::

    approx                                  the deterministic ~4 chars/token tokenizer (default; the simulator's)
    approx,config=DIR/tokenizer_config.json   ... with the chat template of that file
    hf:DIR                                  DIR/tokenizer.json + DIR/tokenizer_config.json (the model's files)
    hf:FILE.json[,config=CONFIG.json]       a tokenizer.json; its chat template from CONFIG.json (default: the
                                            tokenizer_config.json beside it)
    vllm:http://HOST:PORT[,model=NAME][,timeout=SECONDS]
                                            the instance's POST /tokenize (model: default the first of
                                            /v1/models; timeout: default 0.05 s)

Parsing is pure (:func:`parse_tokenizer_spec`, for validating flags); :func:`build_tokenizer` also reads files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from extproc.tokenization._base import Tokenizer, TokenizerConfigError
from extproc.tokenization._vllm import DEFAULT_TOKENIZE_TIMEOUT_S

__all__ = ["DEFAULT_TOKENIZER", "TokenizerSpec", "build_tokenizer", "parse_tokenizer_spec"]

DEFAULT_TOKENIZER = "approx"

Kind = Literal["approx", "hf", "vllm"]
_OPTIONS: dict[Kind, frozenset[str]] = {
    "approx": frozenset({"config"}),
    "hf": frozenset({"config"}),
    "vllm": frozenset({"model", "timeout"}),
}
_KINDS: dict[str, Kind] = {"approx": "approx", "hf": "hf", "vllm": "vllm"}
_SYNTAX = "expected 'approx[,config=FILE]', 'hf:PATH[,config=FILE]' or 'vllm:URL[,model=NAME][,timeout=S]'"


@dataclass(frozen=True, slots=True)
class TokenizerSpec:
    kind: Kind
    target: str | None = None  # hf: the tokenizer.json or its directory; vllm: the instance's base URL
    config: str | None = None  # a tokenizer_config.json whose chat template is used
    model: str | None = None  # vllm: the model name sent with /tokenize
    timeout_s: float = DEFAULT_TOKENIZE_TIMEOUT_S  # vllm


def parse_tokenizer_spec(text: str) -> TokenizerSpec:
    """The :class:`TokenizerSpec` of a ``--tokenizer`` value; :class:`TokenizerConfigError` (a ``ValueError``)
    naming what is wrong otherwise."""
    head, *option_texts = text.strip().split(",")
    kind_text, sep, target = head.partition(":")
    kind = _KINDS.get(kind_text.strip().lower())
    if kind is None:
        raise TokenizerConfigError(f"--tokenizer {text!r}: unknown kind {kind_text.strip()!r}; {_SYNTAX}")
    target = target.strip()
    if kind == "approx" and sep:
        raise TokenizerConfigError(f"--tokenizer {text!r}: 'approx' takes no ':TARGET'; {_SYNTAX}")
    if kind != "approx" and not target:
        what = "a tokenizer.json or its directory" if kind == "hf" else "the instance's URL"
        raise TokenizerConfigError(f"--tokenizer {text!r}: '{kind}:' needs {what}; {_SYNTAX}")
    if kind == "vllm" and not target.startswith(("http://", "https://")):
        raise TokenizerConfigError(f"--tokenizer {text!r}: the vLLM URL must start with http:// or https://")
    options: dict[str, str] = {}
    for option in option_texts:
        key, eq, value = option.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value:
            raise TokenizerConfigError(f"--tokenizer {text!r}: option {option!r} is not key=value")
        if key not in _OPTIONS[kind]:
            allowed = ", ".join(sorted(_OPTIONS[kind]))
            raise TokenizerConfigError(f"--tokenizer {text!r}: '{kind}' has no option {key!r} (options: {allowed})")
        if key in options:
            raise TokenizerConfigError(f"--tokenizer {text!r}: option {key!r} given twice")
        options[key] = value
    timeout_s = DEFAULT_TOKENIZE_TIMEOUT_S
    if "timeout" in options:
        try:
            timeout_s = float(options["timeout"])
        except ValueError:
            timeout_s = math.nan
        if not timeout_s > 0 or math.isinf(timeout_s):
            raise TokenizerConfigError(f"--tokenizer {text!r}: timeout must be a number of seconds > 0")
    return TokenizerSpec(kind, target or None, options.get("config"), options.get("model"), timeout_s)


def build_tokenizer(spec: str | TokenizerSpec = DEFAULT_TOKENIZER) -> Tokenizer:
    """The tokenizer a ``--tokenizer`` value names. Local files are read now (errors name the file); a vLLM
    instance is first asked at the first request."""
    if isinstance(spec, str):
        spec = parse_tokenizer_spec(spec)
    if spec.kind == "vllm":
        from extproc.tokenization._vllm import VLLMTokenizer

        assert spec.target is not None
        return VLLMTokenizer(spec.target, spec.model, spec.timeout_s)
    from extproc.tokenization._local import ApproxTokenizer, HFTokenizer

    if spec.kind == "hf":
        assert spec.target is not None
        return HFTokenizer.from_files(spec.target, spec.config)
    if spec.config is None:
        return ApproxTokenizer()
    from extproc.tokenization._chat_template import JinjaChatTemplate, load_tokenizer_config

    return ApproxTokenizer(JinjaChatTemplate.from_config(load_tokenizer_config(spec.config), origin=repr(spec.config)))
