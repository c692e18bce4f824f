"""A client that sets only OpenAI's ``prompt_cache_key`` (no workflow metadata, no headers): each conversation
stays on one instance and reuses its cached prefix from the second turn on.

``prompt_cache_key`` is the OpenAI SDK's own parameter of ``chat.completions.create`` and ``responses.create``
(OpenAI documents it as the key of cache-aware routing); the gateway takes it as the workflow's identity
(``pck:<key>``, docs/clients.md). Three conversations of four turns each, interleaved.

    python -m examples.prompt_cache_key --base-url http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import Any

from openai import OpenAI

from ._common import RESULT_PREFIX, example_parser, workflow_context

TURNS = ("List the three regions with the highest growth.", "Why do they grow?", "What is the main risk?",
         "Summarise in one sentence.")


def build_parser() -> argparse.ArgumentParser:
    return example_parser(__doc__.splitlines()[0])


def main() -> None:
    args = build_parser().parse_args()
    client = OpenAI(base_url=f"{args.base_url}/v1", api_key="unused", max_retries=0)
    run = uuid.uuid4().hex[:6]
    conversations: dict[str, list[dict[str, Any]]] = {
        f"support-{run}-{i}": [{"role": "system", "content": workflow_context(f"Account review {run}-{i}")}]
        for i in range(3)
    }
    calls: list[dict[str, Any]] = []
    for turn in TURNS:
        for key, messages in conversations.items():
            messages.append({"role": "user", "content": turn})
            raw = client.chat.completions.with_raw_response.create(
                model=args.model, messages=messages, max_tokens=args.max_tokens,  # type: ignore[arg-type]
                prompt_cache_key=key)
            completion = raw.parse()
            messages.append({"role": "assistant", "content": completion.choices[0].message.content or ""})
            usage = completion.usage
            details = usage.prompt_tokens_details if usage is not None else None
            calls.append({"key": key, "served_by": raw.headers.get("x-served-by"),
                          "cached_tokens": (details.cached_tokens or 0) if details is not None else 0})
    problems = []
    for key in conversations:
        mine = [c for c in calls if c["key"] == key]
        served = sorted({str(c["served_by"]) for c in mine})
        print(f"  {key}: served by {served}, cached tokens per turn {[c['cached_tokens'] for c in mine]}")
        if len(served) != 1:
            problems.append(f"{key}: served by {served}")
        if any(c["cached_tokens"] <= 0 for c in mine[1:]):
            problems.append(f"{key}: no cached tokens after the first turn")
    print(RESULT_PREFIX + json.dumps({"calls": calls, "problems": problems}))
    for p in problems:
        print(f"FAILED: {p}")
    print("OK" if not problems else f"{len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
