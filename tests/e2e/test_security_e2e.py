"""A2A authentication through a real Envoy, and log hygiene of every server of the stack.

One stack with ``--auth jwt`` on the A2A service, the ext_proc reporter holding a router token, and every
process logging at info level: the Authorization header passes Envoy unchanged, the router's reports still
arrive, and after requests carrying unique markers and CR/LF/ANSI characters, no log line contains a payload or
prompt marker, a token, or a raw control character, and every line is one JSON object.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import orjson
import pytest

from a2a_service import A2AClient, PermissionDeniedError, UnauthenticatedError
from benchmarks.demo import wait_for_status
from benchmarks.stack import Stack
from tests.conftest import stack_options

SECRET = "e2e-secret-" + uuid.uuid4().hex + uuid.uuid4().hex
ADMIN = "e2e-admin-" + uuid.uuid4().hex
ROUTER = jwt.encode({"role": "router", "aud": "a2a-service", "exp": int(time.time()) + 3600}, SECRET)
NASTY = "\r\n\x1b[31m{\"level\": \"critical\"}\x1b[0m\u2028"  # log injection attempt: CR/LF, ANSI, fake JSON
# The child processes announce their ports on stdout (not logs); everything else must be JSON.
_PORT_LINE = re.compile(r"^[A-Z0-9_]+_LISTENING( \w+=\d+)+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def _secret_file(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def secured_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys = tmp_path_factory.mktemp("keys")
    options = stack_options(
        instances=2,
        log_level="info",
        a2a_args=("--max-message-queue-size", "20", "--auth", "jwt",
                  "--auth-secret-file", _secret_file(keys, "secret", SECRET),
                  "--admin-token-file", _secret_file(keys, "admin", ADMIN)),
        extproc_args=("--a2a-token-file", _secret_file(keys, "router", ROUTER)),
    )
    with Stack(options) as stack:
        yield stack


async def test_authorization_passes_envoy_and_the_rules_hold_there(secured_stack: Stack) -> None:
    workflow_id = f"sec-{uuid.uuid4().hex[:8]}"
    url = secured_stack.url
    async with A2AClient(url, token=ADMIN) as admin:
        token, expires_at = await admin.issue_token(workflow_id, "analyzer", ttl=300)
        assert expires_at > time.time()
    async with httpx.AsyncClient(timeout=10) as raw:
        r = await raw.post(f"{url}/v1/workflows/{workflow_id}/messages",
                           json={"source_agent": "analyzer", "target_agent": "reporter", "payload": {}})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"]["code"] == "missing_token"
    async with A2AClient(url, token=token) as agent:
        await agent.send(workflow_id, "analyzer", "analyzer", {"note": "to self"})
        assert [d.message.json() for d in await agent.receive(workflow_id, "analyzer", timeout=5)] == [
            {"note": "to self"}]
        with pytest.raises(PermissionDeniedError):
            await agent.receive(workflow_id, "reporter")
        with pytest.raises(PermissionDeniedError):
            await agent.stats()
    async with A2AClient(url, token=token + "x") as forged:
        with pytest.raises(UnauthenticatedError):
            await forged.status(workflow_id)


async def test_router_reports_arrive_with_auth_on(secured_stack: Stack) -> None:
    workflow_id = f"sec-rep-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=30) as client:
        for step in range(2):
            r = await client.post(f"{secured_stack.url}/v1/completions", json={
                "model": "m", "prompt": f"shared context, step {step}", "max_tokens": 4,
                "workflow_metadata": {"workflow_id": workflow_id, "agent_id": "writer"}})
            assert r.status_code == 200, r.text
    async with A2AClient(secured_stack.url, token=ADMIN) as admin:
        status = await wait_for_status(admin, workflow_id, completed=2, timeout=10)
    assert status.total_requests == 2 and status.completed_requests == 2  # RecordRequests passed the auth


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


async def _send_marked_requests(secured_stack: Stack) -> list[str]:
    """Requests whose prompt, payload and ids carry unique markers and CR/LF/ANSI; returns what no log may hold."""
    payload_marker, prompt_marker, id_marker = (f"{kind}-{uuid.uuid4().hex}" for kind in ("payload", "prompt", "id"))
    workflow_id = f"sec-log-{uuid.uuid4().hex[:8]}"
    url = secured_stack.url
    async with A2AClient(url, token=ADMIN) as admin:
        token, _ = await admin.issue_token(workflow_id, "a")
    bad_id = f"{id_marker}{NASTY}"
    async with httpx.AsyncClient(timeout=30) as client:
        agent = {"authorization": f"Bearer {token}"}
        # LLM route: a good request with a nasty prompt, and bad ids (400 from the router).
        for metadata, expected in (({"workflow_id": workflow_id, "agent_id": "a"}, 200),
                                   ({"workflow_id": bad_id, "agent_id": bad_id}, 400)):
            r = await client.post(f"{url}/v1/completions", json={
                "model": "m", "prompt": f"{prompt_marker}{NASTY}", "max_tokens": 4, "workflow_metadata": metadata})
            assert r.status_code == expected, r.text
        r = await client.post(f"{url}/v1/chat/completions", content=f'{{"messages": "{prompt_marker}'.encode(),
                              headers={"content-type": "application/json"})
        assert r.status_code == 400  # malformed JSON carrying the prompt marker
        # A2A: a payload with the marker, refused payloads, and ids with control characters in path and body.
        base = f"{url}/v1/workflows/{workflow_id}"
        r = await client.post(f"{base}/messages", headers=agent, json={
            "source_agent": "a", "target_agent": "b", "payload": {"secret": f"{payload_marker}{NASTY}"}})
        assert r.status_code == 200, r.text
        r = await client.post(f"{base}/messages", headers=agent, json={
            "source_agent": "a", "target_agent": bad_id, "payload": {"secret": payload_marker}})
        assert r.status_code == 422, r.text
        r = await client.post(f"{base}/messages", headers=agent,
                              content=f'{{"source_agent": "a", "payload": "{payload_marker}'.encode())
        assert r.status_code == 400, r.text
        quoted = quote(bad_id, safe="")
        r = await client.get(f"{url}/v1/workflows/{quoted}/agents/{quoted}/messages",
                             headers={"authorization": f"Bearer {ADMIN}"}, params={"timeout": 0})
        assert r.status_code in (400, 404, 422), r.text
        r = await client.get(f"{url}/v1/workflows/stats", headers={"authorization": f"Bearer {token}x"})
        assert r.status_code == 401
    time.sleep(0.3)  # let the servers write what they log about these requests
    return [payload_marker, prompt_marker, token, ADMIN, SECRET, ROUTER]


@pytest.fixture(scope="module")
def forbidden(secured_stack: Stack) -> list[str]:
    return asyncio.run(_send_marked_requests(secured_stack))


@pytest.mark.parametrize("server", ["a2a", "extproc", "vllm"])
def test_logs_hold_no_payloads_prompts_tokens_or_raw_control_characters(
    secured_stack: Stack, forbidden: list[str], server: str
) -> None:
    processes = [p for p in [*secured_stack.a2as, *secured_stack.extprocs, *secured_stack.simulators.values()]
                 if p.name.startswith(server)]
    assert processes
    checked = 0
    for process in processes:
        text = process.log_path.read_text(encoding="utf-8", errors="strict")
        for marker in forbidden:
            assert marker not in text, f"{process.name} logged {marker[:12]}..."
        for line in text.splitlines():
            if _PORT_LINE.match(line):
                continue
            try:
                record = orjson.loads(line)  # every line one valid JSON object
            except orjson.JSONDecodeError:
                pytest.fail(f"{process.name} wrote a line that is not JSON: {line[:300]!r}")
            assert isinstance(record, dict), line
            assert record.get("level") is not None
            for value in _strings(record):
                assert not _CONTROL.search(value), f"{process.name}: raw control character in {line[:200]}"
            checked += 1
    assert checked > 0  # the process did log (at info level), so the checks above looked at something
