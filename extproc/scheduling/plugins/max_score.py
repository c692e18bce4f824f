"""``max-score`` picker: the best-scoring candidate; ties go to the highest rendezvous weight of the workflow id
(replicas and restarts make the same choice, and workflows spread evenly), or rotate for requests without a
workflow (so an idle fleet still spreads them)."""

from __future__ import annotations

import hashlib

from extproc.scheduling.framework import SchedulingRequest


def rendezvous_weight(key: str, instance: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{instance}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class MaxScorePicker:
    name = "max-score"

    def __init__(self) -> None:
        self._rotation = 0

    def pick(self, request: SchedulingRequest, best: list[str]) -> str:
        if len(best) == 1:
            return best[0]
        key = request.workflow_id
        if key is None:
            self._rotation += 1
            return best[self._rotation % len(best)]
        return max(best, key=lambda i: rendezvous_weight(key, i))
