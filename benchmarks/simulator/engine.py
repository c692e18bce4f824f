"""The continuous-batching engine model: pure and synchronous, with no clock of its own.

The caller owns time: :meth:`Engine.add_request` takes the arrival time and :meth:`Engine.step` takes the time
the step starts; the returned :class:`StepResult` says how long the step lasts, and everything it reports
(first tokens, tokens, finished requests) happens at ``start + duration``. :func:`simulate` runs a whole
workload in simulated time without sockets or asyncio; :mod:`.driver` runs it against the wall clock.

Scheduling follows vLLM V1's scheduler (``vllm/v1/core/sched/scheduler.py``) with chunked prefill:

1. Running requests first, in admission order: a request still in prefill gets the next chunk of its prompt
   (up to the remaining token budget), a decoding request gets one token. The budget per step is
   ``max_num_batched_tokens``.
2. Then waiting requests, first come first served, while the budget lasts and fewer than ``max_num_seqs`` run.
   A request is admitted when its KV blocks can be allocated; if the head of the queue does not fit, nobody
   behind it is admitted (FCFS head-of-line blocking, as in vLLM). Its cached prefix is skipped: only the
   uncached part of the prompt is prefilled.
3. The step that computes a request's last prompt chunk samples its first token; every later step one more
   token. After ``max_tokens`` tokens the request finishes and frees its blocks (they stay cached).

Before entering the waiting queue every request spends the profile's ``request_overhead_s`` (API-server work
that does not occupy the GPU). Differences from vLLM are listed in :mod:`.kvcache` (KV reserved up front, so
no preemption) and in the README of this package; there is no stop-string or EOS handling: a request always
generates exactly ``max_tokens`` tokens (``finish_reason`` ``"length"``).
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import random
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import BadRequestError
from .kvcache import KVCache, block_hashes
from .latency import LatencyModel, LinearLatencyModel, StepWork
from .profile import Profile
from .tokenizer import FILLER_WORDS, filler_output

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "Engine",
    "EngineRequest",
    "EngineStats",
    "SeqState",
    "SeqStatus",
    "StepResult",
    "simulate",
]

DEFAULT_MAX_TOKENS = 16


@dataclass(slots=True, frozen=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: Sequence[int]
    max_tokens: int = DEFAULT_MAX_TOKENS
    # Sampling seed from the client. Without one the output depends only on the prompt and the engine's seed,
    # as greedy decoding would; with one the output changes with it.
    seed: int | None = None


class SeqStatus(enum.Enum):
    PENDING = "pending"  # in the per-request overhead window, not yet visible to the scheduler
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(slots=True, eq=False)
class SeqState:
    """One request inside the engine. Read it freely; only the engine mutates it. Times are simulated."""

    request_id: str
    prompt: array  # token ids ('I')
    tokens: array  # prompt + generated ids whose KV gets computed (the last output token never is)
    hashes: list[bytes]  # block hashes of ``tokens``
    output_ids: list[int]
    output_pieces: list[str]
    max_tokens: int
    arrival_time: float
    ready_time: float
    status: SeqStatus = SeqStatus.PENDING
    admitted_time: float | None = None
    first_token_time: float | None = None
    prev_token_time: float | None = None
    last_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: str | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at admission
    num_computed: int = 0  # tokens whose KV is in the cache (cached + computed)
    num_output: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt)

    @property
    def finished(self) -> bool:
        return self.status is SeqStatus.FINISHED or self.status is SeqStatus.ABORTED

    def output_text(self, upto: int | None = None) -> str:
        return "".join(self.output_pieces[: self.num_output if upto is None else upto])


@dataclass(slots=True, frozen=True)
class StepResult:
    start: float
    duration: float
    work: StepWork
    admitted: tuple[SeqState, ...] = ()
    emitted: tuple[SeqState, ...] = ()  # produced one token at ``end`` (``num_output == 1``: first token)
    finished: tuple[SeqState, ...] = ()

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def idle(self) -> bool:
        return self.work.num_seqs == 0


@dataclass(slots=True)
class EngineStats:
    """Monotonic totals (Prometheus counters read these)."""

    requests_added: int = 0
    prompt_tokens: int = 0  # prompts whose prefill completed (vllm:prompt_tokens_total)
    generation_tokens: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    steps: int = 0
    busy_time: float = 0.0
    finished_by_reason: dict[str, int] = field(default_factory=dict)


_IDLE = StepWork()


class Engine:
    """vLLM's scheduler + KV cache + latency model. Not thread-safe; O(running requests) per step."""

    def __init__(
        self,
        profile: Profile,
        *,
        rng: random.Random | None = None,
        latency: LatencyModel | None = None,
    ) -> None:
        self.profile = profile.validate()
        rng = rng if rng is not None else random.Random(0)
        self._text_salt = rng.getrandbits(64).to_bytes(8, "little")
        self.latency: LatencyModel = latency if latency is not None else LinearLatencyModel(profile, rng)
        self.kv = KVCache(profile.num_gpu_blocks, profile.block_size)
        self.stats = EngineStats()
        self.slowdown = 1.0  # fault injection: multiplies every step's duration
        self._seqs: dict[str, SeqState] = {}
        self._pending: list[tuple[float, int, SeqState]] = []  # heap on ready time
        self._pending_seq = 0
        self._waiting: deque[SeqState] = deque()
        self._running: list[SeqState] = []
        self._max_len = min(profile.max_model_len, profile.num_gpu_blocks * profile.block_size)

    # --- state --------------------------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    @property
    def max_model_len(self) -> int:
        """Longest prompt + max_tokens accepted (the profile's, capped by the KV capacity)."""
        return self._max_len

    def running_ids(self) -> list[str]:
        """Ids of the running requests, in admission order."""
        return [s.request_id for s in self._running]

    def get(self, request_id: str) -> SeqState | None:
        return self._seqs.get(request_id)

    def has_unfinished(self) -> bool:
        return bool(self._seqs)

    def next_ready_time(self) -> float | None:
        """When the earliest pending request reaches the scheduler, if any is pending."""
        return self._pending[0][0] if self._pending else None

    # --- requests -----------------------------------------------------------------------------------------
    def validate(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """Raise :class:`BadRequestError` if such a request could never be served (vLLM answers 400)."""
        if num_prompt_tokens < 1:
            raise BadRequestError("The prompt is empty; it must contain at least one token.", "prompt")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequestError("max_tokens must be a positive integer.", "max_tokens")
        if num_prompt_tokens + max_tokens > self._max_len:
            raise BadRequestError(
                f"This model's maximum context length is {self._max_len} tokens. However, you requested "
                f"{num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the prompt, {max_tokens} in "
                "the completion). Please reduce the length of the prompt or completion.",
                "max_tokens" if num_prompt_tokens < self._max_len else "prompt",
            )

    def add_request(self, request: EngineRequest, now: float) -> SeqState:
        """Accept a request arriving at simulated time ``now``. Raises :class:`BadRequestError`."""
        if request.request_id in self._seqs:
            raise BadRequestError(f"duplicate request id {request.request_id!r}", "request_id")
        try:
            prompt = array("I", request.prompt_token_ids)
        except (OverflowError, TypeError) as exc:
            raise BadRequestError("token ids must be integers in [0, 2**32).", "prompt") from exc
        self.validate(len(prompt), request.max_tokens)
        output_ids, output_pieces = filler_output(self._choices(prompt, request))
        tokens = array("I", prompt)
        tokens.extend(output_ids[:-1])
        seq = SeqState(
            request_id=request.request_id,
            prompt=prompt,
            tokens=tokens,
            hashes=block_hashes(tokens, self.profile.block_size),
            output_ids=output_ids,
            output_pieces=output_pieces,
            max_tokens=request.max_tokens,
            arrival_time=now,
            ready_time=now + self.latency.request_overhead(),
        )
        self._seqs[seq.request_id] = seq
        self._pending_seq += 1
        heapq.heappush(self._pending, (seq.ready_time, self._pending_seq, seq))
        self.stats.requests_added += 1
        return seq

    def _choices(self, prompt: array, request: EngineRequest) -> list[int]:
        h = hashlib.blake2b(self._text_salt, digest_size=8)
        h.update(prompt.tobytes())
        if request.seed is not None:
            h.update(b"seed:" + str(request.seed).encode())
        rng = random.Random(int.from_bytes(h.digest(), "little"))
        return rng.choices(range(len(FILLER_WORDS)), k=request.max_tokens)

    def abort(self, request_id: str, now: float | None = None) -> bool:
        """Drop a request wherever it is (client went away) and free its blocks. False if unknown."""
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return False
        if seq.status is SeqStatus.PENDING:
            self._pending = [item for item in self._pending if item[2] is not seq]
            heapq.heapify(self._pending)
        elif seq.status is SeqStatus.WAITING:
            self._waiting.remove(seq)
        elif seq.status is SeqStatus.RUNNING:
            self._running.remove(seq)
            self.kv.free(request_id)
        seq.status = SeqStatus.ABORTED
        seq.finish_reason = "abort"
        seq.finish_time = now
        self.stats.requests_aborted += 1
        return True

    def reset_prefix_cache(self) -> int:
        return self.kv.reset()

    # --- the step -----------------------------------------------------------------------------------------
    def _promote_pending(self, now: float) -> None:
        pending = self._pending
        while pending and pending[0][0] <= now:
            seq = heapq.heappop(pending)[2]
            seq.status = SeqStatus.WAITING
            self._waiting.append(seq)

    def step(self, now: float) -> StepResult:
        """Schedule and run one engine step starting at ``now``. Idle (duration 0) when nothing can run."""
        self._promote_pending(now)
        budget = self.profile.max_num_batched_tokens
        scheduled: list[tuple[SeqState, int]] = []
        prefill_tokens = decode_seqs = context = 0

        for seq in self._running:
            if budget <= 0:
                break
            remaining = len(seq.prompt) - seq.num_computed
            if remaining > 0:
                n = remaining if remaining < budget else budget
                prefill_tokens += n
            else:
                n = 1
                decode_seqs += 1
            context += seq.num_computed
            budget -= n
            scheduled.append((seq, n))

        admitted: list[SeqState] = []
        max_seqs = self.profile.max_num_seqs
        kv = self.kv
        while self._waiting and budget > 0 and len(self._running) < max_seqs:
            seq = self._waiting[0]
            alloc = kv.allocate(seq.request_id, seq.tokens, 0, num_prompt_tokens=len(seq.prompt), hashes=seq.hashes)
            if alloc is None:
                break  # FCFS: the head waits for blocks, and so does everyone behind it
            self._waiting.popleft()
            seq.status = SeqStatus.RUNNING
            seq.admitted_time = now
            seq.num_cached_tokens = seq.num_computed = alloc.num_cached_tokens
            self._running.append(seq)
            admitted.append(seq)
            remaining = len(seq.prompt) - seq.num_computed
            n = remaining if remaining < budget else budget
            prefill_tokens += n
            context += seq.num_computed
            budget -= n
            scheduled.append((seq, n))

        if not scheduled:
            return StepResult(now, 0.0, _IDLE)

        work = StepWork(prefill_tokens, len(scheduled), decode_seqs, context)
        duration = self.latency.step_time(work) * self.slowdown
        end = now + duration
        stats = self.stats
        stats.steps += 1
        stats.busy_time += duration

        emitted: list[SeqState] = []
        finished: list[SeqState] = []
        for seq, n in scheduled:
            n_prompt = len(seq.prompt)
            was_prefill = seq.num_computed < n_prompt
            seq.num_computed += n
            kv.commit(seq.request_id, seq.num_computed)
            if was_prefill:
                if seq.num_computed < n_prompt:
                    continue  # a chunk, no token yet
                seq.first_token_time = end
                stats.prompt_tokens += n_prompt
            seq.num_output += 1
            seq.prev_token_time = seq.last_token_time
            seq.last_token_time = end
            stats.generation_tokens += 1
            emitted.append(seq)
            if seq.num_output >= seq.max_tokens:
                seq.status = SeqStatus.FINISHED
                seq.finish_reason = "length"
                seq.finish_time = end
                kv.free(seq.request_id)
                del self._seqs[seq.request_id]
                finished.append(seq)
                stats.requests_finished += 1
                stats.finished_by_reason["length"] = stats.finished_by_reason.get("length", 0) + 1

        if finished:
            self._running = [s for s in self._running if s.status is SeqStatus.RUNNING]
        return StepResult(now, duration, work, tuple(admitted), tuple(emitted), tuple(finished))


def simulate(
    engine: Engine, arrivals: Iterable[tuple[float, EngineRequest]], start: float = 0.0
) -> tuple[dict[str, SeqState], float]:
    """Run ``arrivals`` (``(time, request)``, any order) to completion in simulated time, without sleeping.

    Requests arriving during a step are added when it ends, stamped with their own arrival time. Returns the
    final state of every request by id and the time the last one finished.
    """
    queue = sorted(arrivals, key=lambda item: item[0])
    states: dict[str, SeqState] = {}
    now = start
    i = 0
    while i < len(queue) or engine.has_unfinished():
        while i < len(queue) and queue[i][0] <= now:
            t, req = queue[i]
            states[req.request_id] = engine.add_request(req, t)
            i += 1
        result = engine.step(now)
        if not result.idle:
            now = result.end
            continue
        candidates = [t for t in (engine.next_ready_time(), queue[i][0] if i < len(queue) else None) if t is not None]
        if not candidates:
            break
        now = max(now, min(candidates))
    return states, now
