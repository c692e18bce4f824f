"""W3C Trace Context (``traceparent``): a pure parser, shared by the ext_proc server and the A2A service.

Only for log correlation: nothing here creates, changes or forwards trace context (the headers themselves pass
through Envoy untouched). An invalid value is treated as absent, as the specification asks
(https://www.w3.org/TR/trace-context/#traceparent-header): it costs a trace link, never a request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# version "-" trace-id "-" parent-id "-" trace-flags, lower-case hex only (upper case is invalid per W3C).
_FORMAT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_LENGTH = 55
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str  # 32 lower-case hex characters, never all zero
    span_id: str  # the caller's span (W3C "parent-id"): 16 lower-case hex characters, never all zero
    flags: int  # trace-flags; bit 0 = sampled

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    def log_fields(self) -> dict[str, str]:
        return {"trace_id": self.trace_id, "span_id": self.span_id}


def parse_traceparent(value: str | None) -> TraceContext | None:
    """The trace context of a ``traceparent`` header value, or None when absent or invalid.

    Cost on the hot path: one length check and one fixed-format regex match over 55 characters.
    """
    if not value or len(value) < _LENGTH:
        return None
    version = value[:2]
    if version == "00":
        if len(value) != _LENGTH:  # version 00 defines exactly these four fields
            return None
    elif version == "ff" or (len(value) > _LENGTH and value[_LENGTH] != "-"):
        # "ff" is forbidden; a later version may append fields after a "-", and its first four parse as 00's.
        return None
    if _FORMAT.match(value) is None:
        return None
    trace_id = value[3:35]
    span_id = value[36:52]
    if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return None
    return TraceContext(trace_id, span_id, int(value[53:55], 16))
