"""A vLLM instance's own ``POST /tokenize``: the backend computes the ids itself, chat template included.

Wire format (``vllm/entrypoints/openai/protocol.py``, ``TokenizeCompletionRequest``, ``TokenizeChatRequest``,
``TokenizeResponse``; served by ``vllm/entrypoints/openai/serving_tokenization.py``):

* ``{"model", "prompt", "add_special_tokens": true}`` - a completion prompt, special tokens added as
  ``/v1/completions`` adds them;
* ``{"model", "messages", "add_generation_prompt": true}`` - chat messages, rendered with the server's chat
  template (``add_special_tokens`` defaults to False there, as for ``/v1/chat/completions``);
* answer ``{"count", "max_model_len", "tokens": [int, ...]}`` (newer versions add ``token_strs``).

``model`` is optional in newer vLLM versions and required in older ones: when not configured, the first model
of ``GET /v1/models`` is used. A call never raises: on a timeout, a connection error, a non-2xx answer or a
malformed answer it returns ``None`` and counts the failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx

from extproc.tokenization._base import Messages

__all__ = [
    "DEFAULT_TOKENIZE_TIMEOUT_S",
    "TokenizeResponseError",
    "VLLMTokenizer",
    "parse_models_response",
    "parse_tokenize_response",
]

# The tokenize call sits on the routing hot path in front of the KV lookup; a slow answer is worth less than
# routing without it.
DEFAULT_TOKENIZE_TIMEOUT_S = 0.05


class TokenizeResponseError(ValueError):
    """A ``/tokenize`` or ``/v1/models`` answer does not have the documented shape."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_tokenize_response(data: Any) -> list[int]:
    """The ``tokens`` of a ``/tokenize`` answer; :class:`TokenizeResponseError` on any other shape."""
    if not isinstance(data, Mapping):
        raise TokenizeResponseError(f"expected a JSON object, got {type(data).__name__}")
    tokens = data.get("tokens")
    if not isinstance(tokens, list) or not all(_is_int(t) and t >= 0 for t in tokens):
        raise TokenizeResponseError("'tokens' must be a list of ints >= 0")
    count = data.get("count")
    if count is not None and (not _is_int(count) or count != len(tokens)):
        raise TokenizeResponseError("'count' must equal the number of tokens")
    return tokens


def parse_models_response(data: Any) -> str:
    """The id of the first model of a ``/v1/models`` answer."""
    models = data.get("data") if isinstance(data, Mapping) else None
    if not isinstance(models, list) or not models or not isinstance(models[0], Mapping):
        raise TokenizeResponseError("'data' must be a non-empty list of models")
    model_id = models[0].get("id")
    if not isinstance(model_id, str) or not model_id:
        raise TokenizeResponseError("a model needs a string 'id'")
    return model_id


class VLLMTokenizer:
    """A :class:`~extproc.tokenization.Tokenizer` asking one vLLM instance (``base_url``) to tokenize.

    Counters (monotonic, plain attributes): ``requests``, and ``errors_timeout``, ``errors_connect``,
    ``errors_http``, ``errors_parse``, ``errors_other`` (their sum is :attr:`errors`).
    """

    def __init__(self, base_url: str, model: str | None = None, timeout_s: float = DEFAULT_TOKENIZE_TIMEOUT_S) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self.requests = 0
        self.errors_timeout = 0
        self.errors_connect = 0
        self.errors_http = 0
        self.errors_parse = 0
        self.errors_other = 0

    @property
    def errors(self) -> int:
        return self.errors_timeout + self.errors_connect + self.errors_http + self.errors_parse + self.errors_other

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(self.timeout_s))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def prompt_ids(self, prompt: str) -> list[int] | None:
        return await self._tokenize({"prompt": prompt, "add_special_tokens": True})

    async def chat_ids(self, messages: Messages) -> list[int] | None:
        return await self._tokenize({"messages": list(messages), "add_generation_prompt": True})

    async def _tokenize(self, body: dict[str, Any]) -> list[int] | None:
        self.requests += 1
        try:
            # httpx's timeout applies per phase (connect, write, read); this bounds the whole call.
            async with asyncio.timeout(self.timeout_s):
                if self.model is None:
                    self.model = parse_models_response(await self._get_json("/v1/models"))
                return parse_tokenize_response(await self._post_json("/tokenize", {"model": self.model, **body}))
        except (TimeoutError, httpx.TimeoutException):
            self.errors_timeout += 1
        except httpx.TransportError:
            self.errors_connect += 1
        except httpx.HTTPStatusError:
            self.errors_http += 1
        except ValueError:  # JSONDecodeError and TokenizeResponseError
            self.errors_parse += 1
        except Exception:
            self.errors_other += 1
        return None

    async def _get_json(self, path: str) -> Any:
        response = await self._http().get(path)
        return response.raise_for_status().json()

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        response = await self._http().post(path, json=body)
        return response.raise_for_status().json()
