"""The A2A access rules (pure ``authorize``) and token verification, as table tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from a2a_service import Settings
from a2a_service._transports._auth import (
    ADMIN,
    Action,
    Authenticator,
    Principal,
    Role,
    authorize,
    bearer_token,
    load_auth_config,
    parse_token_request,
    principal_from_claims,
)
from a2a_service.errors import InvalidRequestError, MalformedJSONError, PermissionDeniedError, UnauthenticatedError

SECRET = "s" * 64
ADMIN_TOKEN = "admin-" + "a" * 30
AGENT = Principal(Role.AGENT, "wf-1", "coder")
ROUTER = Principal(Role.ROUTER)

# (principal, action, workflow, acting agent, expected error code or None)
RULES = [
    (AGENT, Action.SEND, "wf-1", "coder", None),
    (AGENT, Action.SEND, "wf-1", "planner", "wrong_agent"),  # impersonation
    (AGENT, Action.SEND, "wf-2", "coder", "wrong_workflow"),
    (AGENT, Action.RECEIVE, "wf-1", "coder", None),
    (AGENT, Action.RECEIVE, "wf-1", "planner", "wrong_agent"),  # reading another agent's queue
    (AGENT, Action.RECEIVE, "wf-2", "coder", "wrong_workflow"),
    (AGENT, Action.ACK, "wf-1", "coder", None),
    (AGENT, Action.ACK, "wf-1", "planner", "wrong_agent"),
    (AGENT, Action.STATUS, "wf-1", None, None),
    (AGENT, Action.STATUS, "wf-2", None, "wrong_workflow"),
    (AGENT, Action.STATS, None, None, "admin_required"),
    (AGENT, Action.DELETE, "wf-1", None, "admin_required"),  # not even its own workflow
    (AGENT, Action.ISSUE_TOKEN, "wf-1", "coder", "admin_required"),
    (AGENT, Action.RECORD, None, None, "router_required"),
    (ROUTER, Action.RECORD, None, None, None),
    (ROUTER, Action.SEND, "wf-1", "coder", "agent_required"),
    (ROUTER, Action.STATUS, "wf-1", None, "agent_required"),
    (ROUTER, Action.STATS, None, None, "admin_required"),
    *[(ADMIN, action, "wf-9", "anyone", None) for action in Action],
]


@pytest.mark.parametrize(("principal", "action", "workflow", "agent", "code"), RULES)
def test_rules_table(principal, action, workflow, agent, code):
    if code is None:
        authorize(principal, action, workflow, agent)
        return
    with pytest.raises(PermissionDeniedError) as exc:
        authorize(principal, action, workflow, agent)
    assert exc.value.code == code and exc.value.http_status == 403 and exc.value.grpc_code == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), (None, None), ("", None), ("Basic abc", None), ("Bearer ", None)],
)
def test_bearer_header_parsing(header, expected):
    if expected is not None:
        assert bearer_token(header) == expected
        return
    with pytest.raises(UnauthenticatedError) as exc:
        bearer_token(header)
    assert exc.value.code == "missing_token" and exc.value.http_status == 401


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"workflow_id": "wf-1", "agent_id": "coder"}, AGENT),
        ({"workflow_id": "wf-1", "agent_id": "coder", "role": "agent"}, AGENT),
        ({"role": "router"}, ROUTER),
        ({"role": "admin"}, ADMIN),
        ({"role": "root"}, None),
        ({"workflow_id": "wf-1"}, None),  # an agent token without an agent
        ({"workflow_id": "wf/1", "agent_id": "coder"}, None),  # not a valid id
        ({"workflow_id": 7, "agent_id": "coder"}, None),
    ],
)
def test_claims_to_principal(claims, expected):
    if expected is not None:
        assert principal_from_claims(claims) == expected
        return
    with pytest.raises(UnauthenticatedError):
        principal_from_claims(claims)


def hs_authenticator(**overrides: object) -> Authenticator:
    settings = Settings(auth="jwt", auth_secret=SECRET, admin_token=ADMIN_TOKEN, **overrides).validate()  # type: ignore[arg-type]
    config = load_auth_config(settings)
    assert config is not None
    return Authenticator(config)


def mint(claims: dict[str, object], key: object = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)  # type: ignore[arg-type]


def test_issued_token_round_trips_and_admin_token_is_admin():
    auth = hs_authenticator()
    token, expires_at = auth.issue("wf-1", "coder", 60)
    assert expires_at > time.time() + 50
    assert auth.authenticate(f"Bearer {token}") == AGENT
    assert auth.authenticate(f"Bearer {ADMIN_TOKEN}") == ADMIN
    with pytest.raises(InvalidRequestError):
        auth.issue("wf-1", "coder", 10 * 24 * 3600.0)  # beyond the longest lifetime


NOW = int(time.time())
# Minted at import (parametrize ids need them): valid for hours, so a long suite run cannot expire them.
GOOD = {"workflow_id": "wf-1", "agent_id": "coder", "aud": "a2a-service", "exp": NOW + 6 * 3600}


@pytest.mark.parametrize(
    ("token", "code", "words"),
    [
        (mint({**GOOD, "exp": NOW - 60}), "token_expired", "expired"),
        (mint(GOOD, key="another-secret-of-enough-length-xxxxxxx"), "invalid_token", "signature"),
        (mint({**GOOD, "aud": "billing"}), "invalid_token", "audience"),
        (mint({k: v for k, v in GOOD.items() if k != "exp"}), "invalid_token", "'exp'"),
        (mint(GOOD, algorithm="HS512"), "invalid_token", "algorithm"),  # not on the configured list
        (jwt.encode(GOOD, None, algorithm="none"), "invalid_token", "algorithm"),  # type: ignore[arg-type]
        ("not-a-jwt", "invalid_token", "malformed"),
        ("a.b.c", "invalid_token", "malformed"),
        (ADMIN_TOKEN[:-1], "invalid_token", "malformed"),  # almost the admin token
    ],
)
def test_bad_tokens_are_refused_with_the_problem_named_but_not_the_token(token, code, words):
    auth = hs_authenticator()
    with pytest.raises(UnauthenticatedError) as exc:
        auth.authenticate(f"Bearer {token}")
    assert exc.value.code == code
    assert words in exc.value.message
    assert token not in str(exc.value.to_json())


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def test_asymmetric_tokens_verify_with_the_public_key_and_hs_confusion_is_refused(tmp_path):
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "pub.pem"
    path.write_bytes(pem)
    settings = Settings(auth="jwt", auth_public_key_file=str(path), auth_algorithms="ES256").validate()
    config = load_auth_config(settings)
    assert config is not None
    auth = Authenticator(config)
    assert auth.authenticate("Bearer " + mint(GOOD, key=private, algorithm="ES256")) == AGENT
    # Signing HS256 with the public key bytes as the secret (algorithm confusion) must not verify.
    head, body = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT"})), _b64(orjson.dumps(GOOD))
    signature = _b64(hmac.new(pem, head + b"." + body, hashlib.sha256).digest())
    token = b".".join((head, body, signature)).decode()
    with pytest.raises(UnauthenticatedError, match="algorithm not accepted"):
        auth.authenticate(f"Bearer {token}")
    with pytest.raises(InvalidRequestError) as exc:
        auth.issue("wf-1", "coder")  # no secret: this service only verifies
    assert exc.value.code == "issuing_disabled"


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"auth": "oauth"}, "auth must be one of"),
        ({"auth": "jwt"}, "needs --auth-secret-file"),
        ({"auth": "jwt", "auth_secret": SECRET, "auth_algorithms": "HS256,RS256"}, "needs --auth-public-key-file"),
        ({"auth": "jwt", "auth_secret": SECRET, "auth_algorithms": "none"}, "unsupported none"),
        ({"auth": "jwt", "auth_secret": SECRET, "auth_secret_file": "/x"}, "not both"),
        ({"auth_token_ttl": 0.0}, "auth_token_ttl"),
    ],
)
def test_settings_validation_names_the_problem(overrides, words):
    with pytest.raises(ValueError, match=words):
        Settings(**overrides).validate()  # type: ignore[arg-type]


def test_short_keys_and_unreadable_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 32 bytes"):
        load_auth_config(Settings(auth="jwt", auth_secret="short").validate())
    with pytest.raises(ValueError, match="admin token must be at least"):
        load_auth_config(Settings(auth="jwt", auth_secret=SECRET, admin_token="tiny").validate())
    with pytest.raises(ValueError, match="cannot read the auth secret file"):
        load_auth_config(Settings(auth="jwt", auth_secret_file=str(tmp_path / "missing")).validate())
    assert load_auth_config(Settings()) is None  # --auth none


def test_secrets_stay_out_of_repr():
    text = repr(Settings(auth="jwt", auth_secret=SECRET, admin_token=ADMIN_TOKEN))
    assert SECRET not in text and ADMIN_TOKEN not in text


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b"", None), (b"{}", None), (b'{"ttl": 60}', 60.0), (b'{"ttl": "60"}', InvalidRequestError),
     (b'{"tll": 60}', InvalidRequestError), (b"[1]", MalformedJSONError), (b"{", MalformedJSONError)],
)
def test_token_request_body(body, expected):
    if isinstance(expected, type):
        with pytest.raises(expected):
            parse_token_request(body)
    else:
        assert parse_token_request(body) == expected


def test_extproc_reporter_token_comes_from_the_file_or_the_env(tmp_path, monkeypatch):
    from extproc.config import settings_from_args
    from extproc.server import a2a_token

    monkeypatch.setenv("EXTPROC_A2A_TOKEN", "from-env")
    assert a2a_token(settings_from_args([])) == "from-env"
    path = tmp_path / "token"
    path.write_text("from-file\n")
    settings = settings_from_args(["--a2a-token-file", str(path)])
    assert a2a_token(settings) == "from-file"
    assert "from-env" not in repr(settings)  # kept out of repr, so out of any log line
    monkeypatch.delenv("EXTPROC_A2A_TOKEN")
    assert a2a_token(settings_from_args([])) is None
