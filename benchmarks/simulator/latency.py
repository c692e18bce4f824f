"""How long an engine step takes, behind a two-method Protocol so another model can be swapped in.

The engine hands the model only what a step does (:class:`StepWork`); the model knows nothing about requests,
blocks or clocks. The default :class:`LinearLatencyModel` is additive:

    step = step_base_s                                   every forward pass (weights read once, launches)
         + prefill_per_token_s * prefill_tokens          compute-bound prompt work (uncached tokens only)
         + per_seq_s           * sequences               per-sequence sampling and bookkeeping
         + kv_read_per_token_s * context_tokens          attention reading the KV of every scheduled sequence

so a batch of many sequences decodes slower per step than a single one, a long prefill chunk stalls the
decodes batched with it (chunked-prefill interference), and cached prompt tokens cost nothing to prefill but
are still read by attention. Attention's quadratic term within a prefill chunk is ignored (FlashAttention
makes it small next to the linear layers at the prompt lengths we simulate). Coefficients and their sources
live in ``profiles/*.toml``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from .profile import Profile

__all__ = ["LatencyModel", "LinearLatencyModel", "StepWork"]


@dataclass(slots=True, frozen=True)
class StepWork:
    prefill_tokens: int = 0  # prompt tokens computed this step (never includes cache hits)
    num_seqs: int = 0  # sequences in the batch (prefill chunks + decodes)
    decode_seqs: int = 0  # of which decoding one token
    context_tokens: int = 0  # KV tokens already in the cache that the scheduled sequences attend to


class LatencyModel(Protocol):
    def step_time(self, work: StepWork) -> float:
        """Duration of one forward pass doing ``work``, in simulated seconds."""
        ...

    def request_overhead(self) -> float:
        """Per-request delay before the request reaches the scheduler (tokenization etc.), in seconds."""
        ...


class LinearLatencyModel:
    """The additive model above. ``rng`` is only drawn from when the profile's ``step_jitter`` > 0."""

    __slots__ = ("_base", "_ctx", "_jitter", "_overhead", "_per_seq", "_prefill", "_rng")

    def __init__(self, profile: Profile, rng: random.Random | None = None) -> None:
        self._base = profile.step_base_s
        self._prefill = profile.prefill_per_token_s
        self._per_seq = profile.per_seq_s
        self._ctx = profile.kv_read_per_token_s
        self._overhead = profile.request_overhead_s
        self._jitter = profile.step_jitter
        self._rng = rng if rng is not None else random.Random(0)

    def step_time(self, work: StepWork) -> float:
        t = (
            self._base
            + self._prefill * work.prefill_tokens
            + self._per_seq * work.num_seqs
            + self._ctx * work.context_tokens
        )
        if self._jitter:
            t *= 1.0 + self._rng.uniform(-self._jitter, self._jitter)
        return t

    def request_overhead(self) -> float:
        return self._overhead
