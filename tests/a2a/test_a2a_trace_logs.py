"""The A2A service's request logs carry the caller's W3C trace context (gRPC metadata ``traceparent``)."""

from __future__ import annotations

import logging
import uuid

import grpc
import pytest

from a2a_service.v1 import a2a_pb2 as pb


async def test_grpc_refusal_is_logged_with_the_trace_id(grpc_client, caplog: pytest.LogCaptureFixture) -> None:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    caplog.set_level(logging.INFO, logger="a2a_service.grpc")
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await grpc_client.stub.SendMessage(pb.SendMessageRequest(workflow_id="w f", source_agent="a", target_agent="b"),
                                           metadata=(("traceparent", f"00-{trace_id}-{span_id}-01"),))
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [record] = [r for r in caplog.records if getattr(r, "trace_id", None) == trace_id]
    assert (record.getMessage(), record.levelno, record.span_id) == ("request refused", logging.INFO, span_id)
    assert (record.method, record.code, record.param) == ("SendMessage", "invalid_id", "workflow_id")


async def test_without_a_valid_traceparent_the_record_has_no_trace_id(grpc_client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="a2a_service.grpc")
    for metadata in ((), (("traceparent", "00-" + "0" * 32 + "-00f067aa0ba902b7-01"),)):
        with pytest.raises(grpc.aio.AioRpcError):
            await grpc_client.stub.SendMessage(pb.SendMessageRequest(workflow_id="w f", source_agent="a",
                                                                     target_agent="b"), metadata=metadata)
    refused = [r for r in caplog.records if r.getMessage() == "request refused"]
    assert len(refused) == 2 and not any(hasattr(r, "trace_id") for r in refused)
