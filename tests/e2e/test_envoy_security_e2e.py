"""Envoy's jwt_authn and local_ratelimit in front of the router, through a real Envoy (docs/envoy-security.md)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.stack import Stack
from extproc.envoy_config import JwtOptions, RateLimit
from tests.conftest import stack_options
from tests.e2e.pki import JwtSigner

ISSUER = "https://issuer.test"
AUDIENCE = "workflow-router"


@pytest.fixture(scope="module")
def signer() -> JwtSigner:
    return JwtSigner()


@pytest.fixture(scope="module")
def jwt_stack(signer: JwtSigner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    jwks = tmp_path_factory.mktemp("jwks") / "jwks.json"
    jwks.write_text(signer.jwks)  # from a file, as a deployment mounts it
    jwt = JwtOptions(ISSUER, (AUDIENCE, "other-audience"), jwks_file=str(jwks))
    with Stack(stack_options(instances=2, envoy_extra={"jwt": jwt})) as running:
        yield running


@pytest.fixture(scope="module")
def limited_stack() -> Iterator[Stack]:
    # A minute between refills: nothing refills while the test runs, so the counts are exact.
    extra = {"llm_rate_limit": RateLimit(5, 5, 60.0), "a2a_rate_limit": RateLimit(3, 3, 60.0)}
    with Stack(stack_options(instances=1, envoy_extra=extra)) as running:
        yield running


def completion(workflow_id: str) -> dict[str, object]:
    return {"model": "m", "prompt": "hello", "max_tokens": 2,
            "workflow_metadata": {"workflow_id": workflow_id, "agent_id": "a"}}


def assert_json_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == "gateway_error" and error["message"], error
    assert "x-served-by" not in response.headers  # a local reply: no instance saw it


async def test_valid_token_reaches_the_instance_and_keeps_affinity(jwt_stack: Stack, signer: JwtSigner) -> None:
    token = signer.token(issuer=ISSUER, audience=AUDIENCE)
    workflow_id = f"jwt-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {token}"}) as client:
        responses = [await client.post(f"{jwt_stack.url}/v1/completions", json=completion(workflow_id))
                     for _ in range(3)]
        status = await client.get(f"{jwt_stack.url}/v1/workflows/{workflow_id}/status")
    assert [r.status_code for r in responses] == [200, 200, 200], responses[-1].text
    assert len({r.headers["x-served-by"] for r in responses}) == 1  # the router was reached: affinity
    assert status.status_code in (200, 404), status.text  # the A2A service answered, not jwt_authn


@pytest.mark.parametrize("case", ["none", "wrong_signature", "expired", "wrong_issuer", "garbage"])
async def test_requests_without_a_valid_token_get_401_json(jwt_stack: Stack, signer: JwtSigner, case: str) -> None:
    headers = {}
    if case == "wrong_signature":
        headers["authorization"] = f"Bearer {JwtSigner().token(issuer=ISSUER, audience=AUDIENCE)}"
    elif case == "expired":  # beyond jwt_authn's default 60 s clock skew
        headers["authorization"] = f"Bearer {signer.token(issuer=ISSUER, audience=AUDIENCE, lifetime_s=-600)}"
    elif case == "wrong_issuer":
        headers["authorization"] = f"Bearer {signer.token(issuer='https://evil.test', audience=AUDIENCE)}"
    elif case == "garbage":
        headers["authorization"] = "Bearer not.a.jwt"
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        llm = await client.post(f"{jwt_stack.url}/v1/completions", json=completion("wf-x"))
        a2a = await client.get(f"{jwt_stack.url}/v1/workflows/wf-x/status")
    for response in (llm, a2a):
        assert_json_error(response, 401)


async def test_token_for_another_audience_is_refused(jwt_stack: Stack, signer: JwtSigner) -> None:
    # Envoy's jwt_authn answers a verified token whose audience is not accepted with 403 (not 401).
    token = signer.token(issuer=ISSUER, audience="another-service")
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {token}"}) as client:
        llm = await client.post(f"{jwt_stack.url}/v1/completions", json=completion("wf-aud"))
        a2a = await client.get(f"{jwt_stack.url}/v1/workflows/wf-aud/status")
    for response in (llm, a2a):
        assert_json_error(response, 403)
        assert "audience" in response.json()["error"]["message"].lower()


async def test_second_accepted_audience_works(jwt_stack: Stack, signer: JwtSigner) -> None:
    token = signer.token(issuer=ISSUER, audience="other-audience")
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {token}"}) as client:
        response = await client.post(f"{jwt_stack.url}/v1/completions", json=completion("wf-aud2"))
    assert response.status_code == 200, response.text


async def test_bursts_beyond_each_bucket_get_429_json(limited_stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        llm = await asyncio.gather(*(client.post(f"{limited_stack.url}/v1/completions",
                                                 json=completion(f"rl-{i}")) for i in range(12)))
        # The A2A bucket is separate: the exhausted LLM bucket does not stop agent messages.
        a2a = await asyncio.gather(*(client.get(f"{limited_stack.url}/v1/workflows/stats") for _ in range(7)))
    assert Counter(r.status_code for r in llm) == {200: 5, 429: 7}, [r.text for r in llm]
    assert Counter(r.status_code for r in a2a) == {200: 3, 429: 4}, [r.text for r in a2a]
    for response in (*llm, *a2a):
        assert response.headers["x-ratelimit-limit"] in ("5", "3")
        if response.status_code == 429:
            assert_json_error(response, 429)
            assert response.headers["x-ratelimit-remaining"] == "0"


def test_example_configs_are_the_generators_output_and_valid(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.e2e.test_gie_e2e import check_example

    check_example(capsys, Path("envoy/envoy-secure.yaml"), [
        "--jwt-issuer", "https://issuer.example.com", "--jwt-audience", "workflow-router",
        "--jwt-jwks-file", "envoy/example-jwks.json", "--llm-rate-limit", "100", "--a2a-rate-limit", "200"])
