"""Settings from flags and environment; the package surface; generated protobuf code is not stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import a2a_service
from a2a_service import _protogen
from a2a_service.config import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, Settings, build_parser


def test_defaults_match_the_documented_ones():
    s = Settings.from_args([], env={})
    assert (s.http_port, s.grpc_port) == (DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT) == (8090, 50051)
    assert (s.max_message_queue_size, s.max_message_size, s.default_message_ttl) == (1000, 1024 * 1024, 300.0)
    assert (s.max_workflows, s.workflow_ttl, s.receive_timeout_cap, s.visibility_timeout) == (1000, 3600.0, 30.0, 30.0)
    assert (s.store, s.redis_prefix, s.redis_timeout, s.redis_pool_size) == ("memory", "a2a:", 2.0, 64)


def test_store_from_flag_or_env():
    env = {"A2A_STORE": "redis://10.0.0.5:6379/2", "A2A_REDIS_PREFIX": "prod:a2a:", "A2A_REDIS_TIMEOUT": "0.5"}
    s = Settings.from_args([], env=env)
    assert (s.store, s.redis_prefix, s.redis_timeout) == ("redis://10.0.0.5:6379/2", "prod:a2a:", 0.5)
    assert Settings.from_args(["--store", "memory"], env=env).store == "memory"
    assert Settings.from_args(["--store", "unix:///run/redis.sock"], env={}).store == "unix:///run/redis.sock"


def test_env_vars_and_flags_with_flags_winning():
    env = {"A2A_HTTP_PORT": "9000", "A2A_MAX_MESSAGE_QUEUE_SIZE": "7", "A2A_WORKFLOW_TTL": "12.5"}
    s = Settings.from_args(["--http-port", "9100"], env=env)
    assert (s.http_port, s.max_message_queue_size, s.workflow_ttl) == (9100, 7, 12.5)


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--http-port", "70000"], {}),
        (["--max-message-queue-size", "0"], {}),
        (["--log-level", "loud"], {}),
        (["--default-message-ttl", "10", "--max-message-ttl", "5"], {}),
        ([], {"A2A_GRPC_PORT": "many"}),
        (["--store", "mysql://db"], {}),
        ([], {"A2A_STORE": "redis"}),
        (["--store", "redis://h:6379/0", "--redis-prefix", ""], {}),
        (["--redis-timeout", "0"], {}),
    ],
)
def test_invalid_settings_exit_with_a_message(argv, env, capsys):
    with pytest.raises(SystemExit) as exc:
        Settings.from_args(argv, env=env)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_help_documents_every_env_var():
    text = build_parser({}).format_help()
    for var in ("A2A_HTTP_PORT", "A2A_GRPC_PORT", "A2A_MAX_MESSAGE_QUEUE_SIZE", "A2A_MAX_MESSAGE_SIZE",
                "A2A_MAX_WORKFLOWS", "A2A_WORKFLOW_TTL", "A2A_LOG_LEVEL"):  # fmt: skip
        assert var in text


def test_public_names_are_pinned():
    assert sorted(a2a_service.__all__) == [
        "A2AClient", "A2AError", "A2AGrpcClient", "A2AServer", "AckResult", "DeleteResult", "Delivery",
        "InvalidRequestError", "MalformedJSONError", "MemoryStore", "Message", "MessageCounters",
        "MessageTooLargeError", "NotFoundError", "PermissionDeniedError", "QueueCore", "QueueFullError",
        "QueueStatus", "RecordKind",
        "RecordResult", "RedisStore", "RequestRecord", "ResourceExhaustedError", "SendRequest", "SendResult",
        "Settings", "Store", "StoreUnavailableError", "SystemStats", "TooManyAgentsError", "TooManyWorkflowsError",
        "UnauthenticatedError", "UnavailableError", "WorkflowStatus",
        "create_app",
    ]  # fmt: skip
    for name in a2a_service.__all__:
        assert getattr(a2a_service, name) is not None


def test_package_import_is_light():
    code = (
        "import sys, a2a_service; heavy = {'fastapi', 'grpc', 'httpx', 'uvicorn', 'starlette', 'redis'} & "
        "set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_memory_store_satisfies_the_store_protocol():
    assert isinstance(a2a_service.MemoryStore(Settings()), a2a_service.Store)


def test_redis_store_satisfies_the_store_protocol():
    pytest.importorskip("redis")
    store = a2a_service.RedisStore(Settings(store="redis://127.0.0.1:1/0"))  # connects lazily: no Redis needed
    assert isinstance(store, a2a_service.Store)


def test_the_memory_store_needs_no_redis():
    code = (
        "import sys; sys.modules['redis'] = None\n"  # any `import redis` now fails
        "from a2a_service import A2AServer, Settings\n"
        "server = A2AServer(Settings.from_args([], env={}))\n"
        "print(type(server.store).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "MemoryStore"


def test_generated_protobuf_code_is_not_stale(tmp_path: Path):
    generated = _protogen.generate(tmp_path)
    for path, name in zip(generated, _protogen.GENERATED_FILES, strict=True):
        committed = _protogen.REPO_ROOT / name
        assert committed.exists(), f"{name} missing: run `make protos`"
        assert _protogen.normalized(path.read_bytes()) == _protogen.normalized(committed.read_bytes()), (
            f"{name} is stale: run `make protos`"
        )


def test_staleness_check_notices_a_changed_proto(tmp_path: Path):
    protos = tmp_path / "protos"
    source = _protogen.PROTO_ROOT / _protogen.PROTO_FILES[0]
    changed = protos / _protogen.PROTO_FILES[0]
    changed.parent.mkdir(parents=True)
    changed.write_text(
        source.read_text().replace("message GetStatsRequest {}", "message GetStatsRequest { bool x = 1; }")
    )
    [pb2, *_] = _protogen.generate(tmp_path / "out", proto_root=protos)
    committed = _protogen.REPO_ROOT / _protogen.GENERATED_FILES[0]
    assert _protogen.normalized(pb2.read_bytes()) != _protogen.normalized(committed.read_bytes())
