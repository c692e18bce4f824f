"""Token ids exactly as the backends compute them, for indexes keyed by tokens (the LMCache controller).

:class:`Tokenizer` is the seam the router uses (prompt or chat messages -> ids, never raising); the
implementations are :class:`ApproxTokenizer` (default, the vLLM simulator's), :class:`HFTokenizer` (a model's
own ``tokenizer.json`` and chat template) and :class:`VLLMTokenizer` (an instance's ``POST /tokenize``).
:func:`build_tokenizer` makes one from a ``--tokenizer`` spec. :mod:`extproc.tokenization.approx` is public: the
simulator tokenizes with it too (one source of truth for the algorithm). Heavy imports (``tokenizers``,
``jinja2``) happen only when an implementation that needs them is built.
"""

from extproc.tokenization._base import (
    ChatTemplate,
    LocalTokenizer,
    Messages,
    TextTokenizer,
    Tokenizer,
    TokenizerConfigError,
)
from extproc.tokenization._chat_template import JinjaChatTemplate, load_tokenizer_config
from extproc.tokenization._factory import DEFAULT_TOKENIZER, TokenizerSpec, build_tokenizer, parse_tokenizer_spec
from extproc.tokenization._local import ApproxTokenizer, HFTokenizer
from extproc.tokenization._vllm import (
    DEFAULT_TOKENIZE_TIMEOUT_S,
    TokenizeResponseError,
    VLLMTokenizer,
    parse_tokenize_response,
)
from extproc.tokenization.approx import DEFAULT_TOKENIZER_CONFIG

__all__ = [
    "DEFAULT_TOKENIZER",
    "DEFAULT_TOKENIZER_CONFIG",
    "DEFAULT_TOKENIZE_TIMEOUT_S",
    "ApproxTokenizer",
    "ChatTemplate",
    "HFTokenizer",
    "JinjaChatTemplate",
    "LocalTokenizer",
    "Messages",
    "TextTokenizer",
    "TokenizeResponseError",
    "Tokenizer",
    "TokenizerConfigError",
    "TokenizerSpec",
    "VLLMTokenizer",
    "build_tokenizer",
    "load_tokenizer_config",
    "parse_tokenize_response",
    "parse_tokenizer_spec",
]
