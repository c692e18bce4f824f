"""Bearer-token authentication and the access rules of the A2A service.

``authorize`` (claims -> allowed?) is pure; ``Authenticator`` verifies a header value into a ``Principal``
and issues agent tokens. Both adapters (HTTP, gRPC) call the same two functions, so every transport and
every replica (memory or Redis store) applies the same rules: tokens are stateless JWTs.

Rules (docs/security.md has the table):

* admin (the admin token, or a JWT with ``role: admin``): everything.
* agent (JWT with ``workflow_id`` + ``agent_id``): send within its workflow as itself (``source_agent`` must
  be the token's agent, so an agent cannot impersonate another), receive/ack only its own queue, read its
  workflow's status.
* router (JWT with ``role: router``, or the admin token): ``RecordRequests`` only -- the ext_proc reporter.

Errors name the problem and never contain the token (nor PyJWT's messages, which can quote token bytes).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from .._validation import check_id
from ..config import (
    AUTH_CLOCK_LEEWAY,
    AUTH_ROLES,
    CLAIM_AGENT,
    CLAIM_ROLE,
    CLAIM_WORKFLOW,
    MAX_AUTH_TOKEN_TTL,
    MIN_ADMIN_TOKEN_LENGTH,
    MIN_AUTH_SECRET_BYTES,
    Settings,
    auth_algorithms,
)
from ..errors import (
    A2AError,
    InvalidRequestError,
    MalformedJSONError,
    PermissionDeniedError,
    UnauthenticatedError,
)


class Action(StrEnum):
    SEND = "send"
    RECEIVE = "receive"
    ACK = "ack"
    STATUS = "status"
    STATS = "stats"
    DELETE = "delete"
    ISSUE_TOKEN = "issue_token"
    RECORD = "record"


class Role(StrEnum):
    AGENT = "agent"
    ROUTER = "router"
    ADMIN = "admin"


ADMIN_ACTIONS = frozenset({Action.STATS, Action.DELETE, Action.ISSUE_TOKEN})
AGENT_QUEUE_ACTIONS = frozenset({Action.SEND, Action.RECEIVE, Action.ACK})


@dataclass(slots=True, frozen=True)
class Principal:
    """Who is calling. Agents carry the workflow and agent their token was issued for."""

    role: Role
    workflow_id: str | None = None
    agent_id: str | None = None


ADMIN = Principal(Role.ADMIN)


def authorize(principal: Principal, action: Action, workflow_id: str | None = None, agent: str | None = None) -> None:
    """Raise ``PermissionDeniedError`` unless ``principal`` may do ``action``.

    ``agent`` is the acting agent: the path's agent for receive/ack, the body's ``source_agent`` for send."""
    role = principal.role
    if role is Role.ADMIN:
        return
    if action is Action.RECORD:
        if role is Role.ROUTER:
            return
        raise PermissionDeniedError("recording requests needs a router or the admin token", code="router_required")
    if action in ADMIN_ACTIONS:
        raise PermissionDeniedError(f"{action.value} needs the admin token", code="admin_required")
    if role is not Role.AGENT:
        raise PermissionDeniedError(f"a {role.value} token cannot {action.value}", code="agent_required")
    if workflow_id != principal.workflow_id:
        raise PermissionDeniedError("the token is for another workflow", param="workflow_id", code="wrong_workflow")
    if action in AGENT_QUEUE_ACTIONS and agent != principal.agent_id:
        if action is Action.SEND:
            message, param = "the token is for another agent: source_agent must be the token's agent", "source_agent"
        else:
            message, param = "the token is for another agent: it may only use its own queue", "agent_id"
        raise PermissionDeniedError(message, param=param, code="wrong_agent")


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    if not header:
        raise UnauthenticatedError("missing bearer token: send 'Authorization: Bearer <token>'", code="missing_token")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise UnauthenticatedError("the Authorization header must use the Bearer scheme", code="missing_token")
    token = token.strip()
    if not token:
        raise UnauthenticatedError("the Authorization header carries an empty token", code="missing_token")
    return token


def _digest(value: str | bytes) -> bytes:
    # Comparing fixed-size digests keeps compare_digest constant-time in the length too.
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).digest()


@dataclass(slots=True, frozen=True)
class AuthConfig:
    """What verification needs, with the key material already loaded (``load_auth_config``)."""

    algorithms: tuple[str, ...]
    audience: str
    token_ttl: float
    secret: bytes | None = field(default=None, repr=False)
    public_key: bytes | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {path!r}: {exc.strerror}") from None


def load_auth_config(settings: Settings) -> AuthConfig | None:
    """``None`` with ``--auth none``; otherwise the loaded keys. Raises ``ValueError`` naming the problem."""
    if settings.auth == "none":
        return None
    secret = settings.auth_secret.encode() if settings.auth_secret else None
    if settings.auth_secret_file:
        secret = _read(settings.auth_secret_file, "auth secret")
    if secret is not None and len(secret) < MIN_AUTH_SECRET_BYTES:
        raise ValueError(f"the auth secret must be at least {MIN_AUTH_SECRET_BYTES} bytes")
    public_key = _read(settings.auth_public_key_file, "public key") if settings.auth_public_key_file else None
    if public_key is not None and b"PUBLIC KEY" not in public_key:
        raise ValueError("--auth-public-key-file must hold a PEM public key")
    admin = settings.admin_token
    if settings.admin_token_file:
        admin = _read(settings.admin_token_file, "admin token").decode(errors="strict")
    if admin and len(admin) < MIN_ADMIN_TOKEN_LENGTH:
        raise ValueError(f"the admin token must be at least {MIN_ADMIN_TOKEN_LENGTH} characters")
    return AuthConfig(
        algorithms=auth_algorithms(settings),
        audience=settings.auth_audience,
        token_ttl=settings.auth_token_ttl,
        secret=secret,
        public_key=public_key,
        admin_token=admin or None,
    )


class Authenticator:
    """Verifies bearer tokens into principals; issues agent tokens when it holds an HS* secret."""

    def __init__(self, config: AuthConfig) -> None:
        try:
            import jwt  # PyJWT: only needed with --auth jwt
        except ImportError as exc:
            raise ImportError("--auth jwt needs PyJWT: pip install 'PyJWT[crypto]>=2.8'") from exc

        self._jwt = jwt
        self.config = config
        self._admin_digest = _digest(config.admin_token) if config.admin_token else None
        # Each accepted algorithm maps to the one key of its family: an HS* token is never checked against
        # the public key (the classic RS256 -> HS256 confusion), and PyJWT refuses PEM keys as HMAC secrets.
        public = _load_public_key(config.public_key) if config.public_key is not None else None
        self._keys: dict[str, Any] = {
            alg: config.secret if alg.startswith("HS") else public for alg in config.algorithms
        }
        self._issue_alg = next((a for a in config.algorithms if a.startswith("HS")), None)

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator | None:
        config = load_auth_config(settings)
        return None if config is None else cls(config)

    def authenticate(self, header: str | None) -> Principal:
        """The principal of an ``Authorization`` header value; ``UnauthenticatedError`` if it does not verify."""
        token = bearer_token(header)
        if self._admin_digest is not None and hmac.compare_digest(_digest(token), self._admin_digest):
            return ADMIN
        return self.verify(token)

    def verify(self, token: str) -> Principal:
        jwt = self._jwt
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise UnauthenticatedError("malformed token: not a JWT (nor the admin token)") from None
        key = self._keys.get(alg) if isinstance(alg, str) else None
        if key is None:  # the header's alg only selects among the configured ones, never widens them
            raise UnauthenticatedError(
                f"token algorithm not accepted (accepted: {', '.join(self.config.algorithms)})", code="invalid_token"
            )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.config.audience,
                leeway=AUTH_CLOCK_LEEWAY,
                options={"require": ["exp", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("token expired", code="token_expired") from None
        except jwt.InvalidAudienceError:
            raise UnauthenticatedError(f"token audience is not {self.config.audience!r}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise UnauthenticatedError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.ImmatureSignatureError:
            raise UnauthenticatedError("token not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidSignatureError:
            raise UnauthenticatedError("token signature does not verify") from None
        except jwt.InvalidTokenError:
            raise UnauthenticatedError("malformed token") from None
        return principal_from_claims(claims)

    def issue(self, workflow_id: str, agent_id: str, ttl: float | None = None, *, now: float | None = None
              ) -> tuple[str, float]:
        """A signed agent token for ``(workflow_id, agent_id)`` and its expiry (epoch seconds)."""
        secret = self.config.secret
        if self._issue_alg is None or secret is None:  # an HS* algorithm is accepted only with a secret
            raise InvalidRequestError(
                "this service only verifies tokens (no HS* secret): mint agent tokens with your signing key",
                code="issuing_disabled",
            )
        lifetime = self.config.token_ttl if ttl is None else ttl
        if not 0 < lifetime <= MAX_AUTH_TOKEN_TTL:
            raise InvalidRequestError(
                f"ttl must be > 0 and <= {MAX_AUTH_TOKEN_TTL:g} seconds", param="ttl", code="out_of_range"
            )
        issued = time.time() if now is None else now
        expires = issued + lifetime
        claims = {
            CLAIM_WORKFLOW: workflow_id,
            CLAIM_AGENT: agent_id,
            CLAIM_ROLE: Role.AGENT.value,
            "aud": self.config.audience,
            "iat": int(issued),
            "exp": int(expires),
            "jti": uuid.uuid4().hex,
        }
        return self._jwt.encode(claims, secret, algorithm=self._issue_alg), float(int(expires))


def _load_public_key(pem: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        return load_pem_public_key(pem)  # parsed once, not per request
    except ValueError:
        raise ValueError("--auth-public-key-file does not hold a readable PEM public key") from None


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """Pure: verified claims -> principal. Agent tokens must name a valid workflow and agent."""
    role = claims.get(CLAIM_ROLE, Role.AGENT.value)
    if role not in AUTH_ROLES:
        raise UnauthenticatedError(f"token role must be one of {', '.join(AUTH_ROLES)}")
    if role != Role.AGENT.value:
        return Principal(Role(role))
    try:
        workflow_id = check_id(claims.get(CLAIM_WORKFLOW), CLAIM_WORKFLOW)
        agent_id = check_id(claims.get(CLAIM_AGENT), CLAIM_AGENT)
    except A2AError:
        raise UnauthenticatedError(
            f"agent tokens need valid {CLAIM_WORKFLOW!r} and {CLAIM_AGENT!r} claims"
        ) from None
    return Principal(Role.AGENT, workflow_id, agent_id)


def parse_token_request(body: bytes) -> float | None:
    """The body of a token request: empty, or ``{"ttl": seconds}``. Returns the ttl (``None`` = default)."""
    if not body.strip():
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedJSONError("the body is not valid JSON", param="body") from None
    if not isinstance(data, dict):
        raise MalformedJSONError("the body must be a JSON object", param="body")
    unknown = sorted(set(data) - {"ttl"})
    if unknown:
        raise InvalidRequestError(f"unknown field {unknown[0]!r}", param=unknown[0], code="unknown_field")
    ttl = data.get("ttl")
    if ttl is None:
        return None
    if type(ttl) not in (int, float):
        raise InvalidRequestError("ttl must be a number of seconds", param="ttl", code="invalid_type")
    return float(ttl)


def www_authenticate(exc: UnauthenticatedError) -> str:
    """The RFC 6750 challenge of a 401: no error code when no token was sent at all."""
    if exc.code == "missing_token":
        return 'Bearer realm="a2a"'
    return 'Bearer realm="a2a", error="invalid_token"'
