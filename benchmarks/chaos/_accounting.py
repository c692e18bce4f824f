"""The values a chaos run records (calls, A2A message accounting, the fault window, a scenario's result) and the
pure accounting over them: rates, recovery time, the summary, the printed table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

LLM_KINDS = ("llm_wf", "llm_plain")
A2A_KINDS = ("a2a_send", "a2a_recv", "a2a_ack")
# Consecutive normal calls (first attempt, not via the fallback route) that count as "recovered".
RECOVERY_RUN = 5


@dataclass(frozen=True, slots=True)
class Call:
    """One client call, after its retries."""

    kind: str
    started: float
    ended: float
    ok: bool
    errors: tuple[str, ...]  # the error kind of every failed attempt ("connect", "timeout", "503", ...)
    served_by: str | None = None
    fallback: bool = False
    workflow: str | None = None

    @property
    def attempts(self) -> int:
        return len(self.errors) + (1 if self.ok else 0)

    @property
    def normal(self) -> bool:
        return self.ok and not self.errors and not self.fallback


@dataclass(slots=True)
class Messages:
    """Exactly-once accounting of A2A messages by their payload id (``mid``)."""

    confirmed: set[str] = field(default_factory=set)  # the send was answered 2xx
    delivered: Counter[str] = field(default_factory=Counter)  # mid -> deliveries seen by receivers
    message_ids: dict[str, set[str]] = field(default_factory=dict)  # mid -> service message ids delivered
    redelivered: Counter[str] = field(default_factory=Counter)  # message_id -> deliveries beyond the first
    unacked: set[str] = field(default_factory=set)  # message ids whose ack failed or found no lease
    ambiguous_sends: set[str] = field(default_factory=set)  # mids whose send had a transport error, then retried

    def lost(self) -> set[str]:
        return {mid for mid in self.confirmed if self.delivered[mid] == 0}

    def duplicated(self) -> int:
        return sum(n - 1 for n in self.delivered.values() if n > 1)

    def contract_violations(self) -> set[str]:
        """Message ids delivered more than once although their ack had succeeded (at-least-once allows a
        redelivery only of a message that was not acknowledged in time)."""
        return {mid for mid in self.redelivered if mid not in self.unacked}


@dataclass(frozen=True, slots=True)
class Window:
    load_start: float
    fault_start: float
    fault_end: float
    load_end: float


@dataclass(slots=True)
class ScenarioResult:
    name: str
    sent: int = 0  # LLM calls
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # final error kind of LLM calls that failed
    failed_attempts: Counter[str] = field(default_factory=Counter)  # every failed attempt, all kinds
    a2a_failed: Counter[str] = field(default_factory=Counter)  # A2A calls that failed after their retries
    fallback: int = 0
    rps_before: float = 0.0
    rps_during: float = 0.0
    msgs_sent: int = 0
    msgs_delivered: int = 0
    msgs_lost: int = 0
    msgs_duplicated: int = 0
    recovery_s: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    window: Window | None = None

    @property
    def held(self) -> float:
        return self.rps_during / self.rps_before if self.rps_before else 0.0


# --- pure accounting --------------------------------------------------------------------------------------------
def rate(calls: Iterable[Call], start: float, end: float, kinds: Sequence[str] = LLM_KINDS) -> float:
    """Successful calls of ``kinds`` that ended in [start, end), per second."""
    if end <= start:
        return 0.0
    return sum(1 for c in calls if c.kind in kinds and c.ok and start <= c.ended < end) / (end - start)


def recovery_time(calls: Iterable[Call], after: float, kinds: Sequence[str] = LLM_KINDS,
                  run: int = RECOVERY_RUN) -> float | None:
    """Seconds from ``after`` to the start of the first ``run`` consecutive normal calls started after it
    (``None``: never within the measurement)."""
    ordered = sorted((c for c in calls if c.kind in kinds and c.started >= after), key=lambda c: c.started)
    streak = 0
    for index, call in enumerate(ordered):
        streak = streak + 1 if call.normal else 0
        if streak == run:
            return max(0.0, ordered[index - run + 1].started - after)
    return None


def summarize(name: str, calls: Sequence[Call], messages: Messages, window: Window,
              recovery_kinds: Sequence[str] = LLM_KINDS) -> ScenarioResult:
    llm = [c for c in calls if c.kind in LLM_KINDS]
    result = ScenarioResult(name=name, sent=len(llm), ok=sum(c.ok for c in llm), window=window)
    result.failed.update(c.errors[-1] for c in llm if not c.ok and c.errors)
    result.failed.update("unknown" for c in llm if not c.ok and not c.errors)
    for call in calls:
        result.failed_attempts.update(f"{call.kind}:{e}" for e in call.errors)
        if call.kind in A2A_KINDS and not call.ok:
            result.a2a_failed[f"{call.kind}:{call.errors[-1] if call.errors else 'unknown'}"] += 1
    result.fallback = sum(c.fallback for c in llm)
    warm = window.load_start + 0.3 * (window.fault_start - window.load_start)  # skip the ramp-up
    result.rps_before = rate(calls, warm, window.fault_start)
    result.rps_during = rate(calls, window.fault_start, max(window.fault_end, window.fault_start + 0.5))
    result.msgs_sent = len(messages.confirmed)
    result.msgs_delivered = sum(1 for mid in messages.confirmed if messages.delivered[mid])
    result.msgs_lost = len(messages.lost())
    result.msgs_duplicated = messages.duplicated()
    result.recovery_s = recovery_time(calls, window.fault_end, recovery_kinds)
    return result


def _counter_text(counter: Counter[str], limit: int = 3) -> str:
    if not counter:
        return "0"
    top = ", ".join(f"{k} {v}" for k, v in counter.most_common(limit))
    more = len(counter) - limit
    return f"{sum(counter.values())} ({top}{', …' if more > 0 else ''})"


COLUMNS = ("scenario", "LLM sent", "ok", "failed", "A2A failed", "failed attempts (all)", "via fallback",
           "req/s before → during", "msgs sent/deliv/lost/dup", "recovery s", "notes")


def format_row(r: ScenarioResult) -> list[str]:
    recovery = "never" if r.recovery_s is None else f"{r.recovery_s:.2f}"
    notes = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.notes.items())
    return [r.name, str(r.sent), str(r.ok), _counter_text(r.failed), _counter_text(r.a2a_failed),
            _counter_text(r.failed_attempts),
            str(r.fallback), f"{r.rps_before:.0f} → {r.rps_during:.0f} ({r.held:.0%})",
            f"{r.msgs_sent}/{r.msgs_delivered}/{r.msgs_lost}/{r.msgs_duplicated}", recovery, notes]


def format_table(results: Iterable[ScenarioResult]) -> str:
    rows = [list(COLUMNS), *(format_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
