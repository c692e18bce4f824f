"""The continuous-batching engine model: pure and synchronous, with no clock of its own.

The caller owns time: :meth:`Engine.add_request` takes the arrival time and :meth:`Engine.step` takes the time
the step starts; the returned :class:`StepResult` says how long the step lasts, and everything it reports
(first tokens, tokens, finished requests) happens at ``start + duration``. :func:`simulate` runs a whole
workload in simulated time without sockets or asyncio; :mod:`.driver` runs it against the wall clock.

Scheduling follows vLLM V1's scheduler (``vllm/v1/core/sched/scheduler.py``) with chunked prefill:

1. Running requests first, in scheduling order: a request still in prefill gets the next chunk of its prompt
   (up to the remaining token budget), a decoding request gets one token. The budget per step is
   ``max_num_batched_tokens``. Each gets the KV blocks for the tokens it is scheduled (vLLM's
   ``allocate_slots``); when they are missing, a running request is **preempted**: under ``fcfs`` the last one
   in the running list, under ``priority`` the one with the worst ``(priority, arrival_time)``. A preempted
   request frees its blocks (they stay cached), goes back to the front of the waiting queue and later
   recomputes its prompt and the tokens it generated (prefix-cache hits included) before decoding on.
2. Then, only if nobody was preempted this step, waiting requests while the budget lasts and fewer than
   ``max_num_seqs`` run: ``fcfs`` in arrival order, ``priority`` by ``(priority, arrival_time)``
   (``vllm/v1/core/sched/request_queue.py``). A request is admitted when the blocks of its first chunk can be
   allocated; if the head of the queue does not fit, nobody behind it is admitted (head-of-line blocking, as
   in vLLM). Its cached prefix is skipped: only the uncached part of the prompt is prefilled.
3. The step that computes a request's last prompt chunk samples its first token; every later step one more
   token. After ``max_tokens`` tokens the request finishes and frees its blocks (they stay cached).

Before entering the waiting queue every request spends the profile's ``request_overhead_s`` (API-server work
that does not occupy the GPU). Other differences from vLLM are in the README of this package; there is no
stop-string or EOS handling: a request always generates exactly ``max_tokens`` tokens (``finish_reason``
``"length"``).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import heapq
import random
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .block_hash import BlockHasher
from .errors import BadRequestError
from .kvcache import KVCache
from .latency import LatencyModel, LinearLatencyModel, StepWork
from .profile import Profile
from .tokenizer import FILLER_WORDS, filler_output

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "SCHEDULING_POLICIES",
    "Engine",
    "EngineRequest",
    "EngineStats",
    "SchedulingPolicy",
    "SeqState",
    "SeqStatus",
    "StepResult",
    "simulate",
]

DEFAULT_MAX_TOKENS = 16
# vLLM's --scheduling-policy (vllm/config/scheduler.py); "fcfs" is the default.
SchedulingPolicy = Literal["fcfs", "priority"]
SCHEDULING_POLICIES: tuple[SchedulingPolicy, ...] = ("fcfs", "priority")


@dataclass(slots=True, frozen=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: Sequence[int]
    max_tokens: int = DEFAULT_MAX_TOKENS
    # Sampling seed from the client. Without one the output depends only on the prompt and the engine's seed,
    # as greedy decoding would; with one the output changes with it.
    seed: int | None = None
    # vLLM's per-request priority: lower runs earlier; only with the "priority" scheduling policy.
    priority: int = 0
    # The LoRA adapter the request runs with (None: the base model): part of every block's hash, as in vLLM.
    lora_name: str | None = None


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
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at (first) admission
    num_computed: int = 0  # tokens whose KV is in the cache (cached + computed)
    num_output: int = 0
    priority: int = 0
    num_preemptions: int = 0

    @property
    def num_known_tokens(self) -> int:
        """Prompt + generated tokens: computing all of them samples the next token."""
        return len(self.prompt) + self.num_output

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
    preempted: tuple[SeqState, ...] = ()  # sent back to the waiting queue at ``start``

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
    preemptions: int = 0  # vllm:num_preemptions_total
    steps: int = 0
    busy_time: float = 0.0
    finished_by_reason: dict[str, int] = field(default_factory=dict)


_IDLE = StepWork()


class _WaitingQueue:
    """vLLM's ``FCFSRequestQueue`` (a deque) or ``PriorityRequestQueue`` (a heap on (priority, arrival))."""

    __slots__ = ("_fcfs", "_heap", "_n", "_priority")

    def __init__(self, policy: SchedulingPolicy) -> None:
        self._priority = policy == "priority"
        self._fcfs: deque[SeqState] = deque()
        self._heap: list[tuple[int, float, int, SeqState]] = []
        self._n = 0

    def __len__(self) -> int:
        return len(self._heap) if self._priority else len(self._fcfs)

    def add(self, seq: SeqState) -> None:
        if self._priority:
            self._n += 1
            heapq.heappush(self._heap, (seq.priority, seq.arrival_time, self._n, seq))
        else:
            self._fcfs.append(seq)

    def prepend(self, seq: SeqState) -> None:
        """A preempted request: the front under fcfs; under priority its (priority, arrival) decides."""
        if self._priority:
            self._n += 1
            heapq.heappush(self._heap, (seq.priority, seq.arrival_time, -self._n, seq))
        else:
            self._fcfs.appendleft(seq)

    def peek(self) -> SeqState:
        return self._heap[0][3] if self._priority else self._fcfs[0]

    def pop(self) -> SeqState:
        return heapq.heappop(self._heap)[3] if self._priority else self._fcfs.popleft()

    def remove(self, seq: SeqState) -> None:
        if self._priority:
            self._heap = [item for item in self._heap if item[3] is not seq]
            heapq.heapify(self._heap)
        else:
            self._fcfs.remove(seq)


class Engine:
    """vLLM's scheduler + KV cache + latency model. Not thread-safe; O(running requests) per step."""

    def __init__(
        self,
        profile: Profile,
        *,
        rng: random.Random | None = None,
        latency: LatencyModel | None = None,
        scheduling_policy: SchedulingPolicy = "fcfs",
        hasher: BlockHasher | None = None,
        record_kv_events: bool = False,
    ) -> None:
        self.profile = profile.validate()
        if scheduling_policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling_policy must be one of {SCHEDULING_POLICIES}, got {scheduling_policy!r}")
        self.scheduling_policy: SchedulingPolicy = scheduling_policy
        rng = rng if rng is not None else random.Random(0)
        self._text_salt = rng.getrandbits(64).to_bytes(8, "little")
        self.latency: LatencyModel = latency if latency is not None else LinearLatencyModel(profile, rng)
        self.kv = KVCache(profile.num_gpu_blocks, profile.block_size, record_events=record_kv_events)
        if hasher is not None:
            self.kv.hasher = hasher
        self.stats = EngineStats()
        self.slowdown = 1.0  # fault injection: multiplies every step's duration
        self._seqs: dict[str, SeqState] = {}
        self._pending: list[tuple[float, int, SeqState]] = []  # heap on ready time
        self._pending_seq = 0
        self._waiting = _WaitingQueue(scheduling_policy)
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
    def validate(self, num_prompt_tokens: int, max_tokens: int, priority: int = 0) -> None:
        """Raise :class:`BadRequestError` if such a request could never be served (vLLM answers 400)."""
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise BadRequestError("priority must be an integer.", "priority")
        if priority != 0 and self.scheduling_policy != "priority":
            # vLLM's input processor (vllm/v1/engine/processor.py) raises this ValueError: HTTP 400.
            raise BadRequestError(f"Got priority {priority} but Priority scheduling is not enabled.", "priority")
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
        self.validate(len(prompt), request.max_tokens, request.priority)
        output_ids, output_pieces = filler_output(self._choices(prompt, request))
        tokens = array("I", prompt)
        tokens.extend(output_ids[:-1])
        seq = SeqState(
            request_id=request.request_id,
            prompt=prompt,
            tokens=tokens,
            hashes=self.kv.hash_blocks(tokens, extra_keys=(request.lora_name,) if request.lora_name else None),
            output_ids=output_ids,
            output_pieces=output_pieces,
            max_tokens=request.max_tokens,
            arrival_time=now,
            ready_time=now + self.latency.request_overhead(),
            priority=request.priority,
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
            self._waiting.add(seq)

    def _preempt(self, seq: SeqState) -> None:
        # vLLM's _preempt_request: free the blocks (they stay cached), recompute from scratch later.
        self.kv.free(seq.request_id)
        seq.status = SeqStatus.WAITING
        seq.num_computed = 0
        seq.num_preemptions += 1
        self.stats.preemptions += 1
        self._waiting.prepend(seq)

    def step(self, now: float) -> StepResult:
        """Schedule and run one engine step starting at ``now``. Idle (duration 0) when nothing can run."""
        self._promote_pending(now)
        budget = self.profile.max_num_batched_tokens
        kv = self.kv
        scheduled: dict[SeqState, int] = {}  # insertion-ordered
        preempted: list[SeqState] = []
        by_priority = self.scheduling_policy == "priority"

        running = self._running
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            remaining = seq.num_known_tokens - seq.num_computed
            n = remaining if remaining < budget else budget
            while not kv.grow(seq.request_id, seq.num_computed + n):
                # Out of blocks: preempt the lowest-priority running request (vLLM's scheduler.schedule).
                victim = max(running, key=lambda r: (r.priority, r.arrival_time)) if by_priority else running[-1]
                running.remove(victim)
                if victim in scheduled:
                    budget += scheduled.pop(victim)
                    i -= 1
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                scheduled[seq] = n
                budget -= n
                i += 1
                continue
            break  # the request could not be scheduled: nor can anyone after it

        admitted: list[SeqState] = []
        max_seqs = self.profile.max_num_seqs
        waiting = self._waiting
        while not preempted and waiting and budget > 0 and len(running) < max_seqs:
            seq = waiting.peek()
            target = seq.num_known_tokens
            hit = kv.num_hit_tokens(seq.hashes, target)
            n = min(target - hit, budget)
            alloc = kv.allocate(
                seq.request_id, seq.tokens, 0, num_prompt_tokens=target, hashes=seq.hashes, num_tokens=hit + n
            )
            if alloc is None:
                break  # the head waits for blocks, and so does everyone behind it
            waiting.pop()
            seq.status = SeqStatus.RUNNING
            if seq.admitted_time is None:
                seq.admitted_time = now
                seq.num_cached_tokens = alloc.num_cached_tokens
            seq.num_computed = alloc.num_cached_tokens
            running.append(seq)
            admitted.append(seq)
            scheduled[seq] = n
            budget -= n

        if not scheduled:
            if preempted:  # the head of the running list preempted itself: schedule again without it
                again = self.step(now)
                return dataclasses.replace(again, preempted=tuple(preempted) + again.preempted)
            return StepResult(now, 0.0, _IDLE)

        prefill_tokens = decode_seqs = context = 0
        for seq, n in scheduled.items():
            context += seq.num_computed
            if n == 1 and seq.num_output > 0 and seq.num_computed + 1 == seq.num_known_tokens:
                decode_seqs += 1
            else:
                prefill_tokens += n  # a prompt chunk, or recomputation after a preemption
        work = StepWork(prefill_tokens, len(scheduled), decode_seqs, context)
        duration = self.latency.step_time(work) * self.slowdown
        end = now + duration
        stats = self.stats
        stats.steps += 1
        stats.busy_time += duration

        emitted: list[SeqState] = []
        finished: list[SeqState] = []
        for seq, n in scheduled.items():
            seq.num_computed += n
            kv.commit(seq.request_id, seq.num_computed)
            if seq.num_computed < seq.num_known_tokens:
                continue  # a chunk, no token yet
            if seq.num_output == 0:
                seq.first_token_time = end
                stats.prompt_tokens += len(seq.prompt)
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
            self._running = [s for s in running if s.status is SeqStatus.RUNNING]
        return StepResult(
            now,
            duration,
            work,
            tuple(admitted),
            tuple(emitted),
            tuple(finished),
            tuple(preempted),
        )


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
