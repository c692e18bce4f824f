"""``a2a_service.client`` works without grpcio and the protobuf stubs (AutoGen's virtualenv pins protobuf 5)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import a2a_service
import a2a_service.client as client


def test_importing_the_http_client_loads_no_grpc_or_protobuf() -> None:
    code = ("import sys, a2a_service.client; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_the_grpc_client_is_still_reachable_from_client_and_the_package() -> None:
    from a2a_service._transports._grpc_client import A2AGrpcClient

    assert client.A2AGrpcClient is A2AGrpcClient is a2a_service.A2AGrpcClient
    assert set(client.__all__) == {"A2AClient", "A2AGrpcClient"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = client.nope  # type: ignore[attr-defined]
