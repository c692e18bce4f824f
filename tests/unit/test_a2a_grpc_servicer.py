"""The gRPC servicer without a network: error translation and Subscribe's handling of a broken stream."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from a2a_service import MemoryStore, SendRequest, Settings
from a2a_service._transports._grpc import A2AServicer
from a2a_service.v1 import a2a_pb2 as pb


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, fail_write: BaseException | None = None) -> None:
        self.fail_write = fail_write
        self.written: list[pb.SubscribeResponse] = []
        self.aborted: tuple[grpc.StatusCode, str, dict[str, str]] | None = None

    async def write(self, message: pb.SubscribeResponse) -> None:
        if self.fail_write is not None:
            raise self.fail_write
        self.written.append(message)

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple = ()) -> None:
        self.aborted = (code, details, dict(trailing_metadata))
        raise Aborted


@pytest.fixture
async def store():
    s = MemoryStore(Settings(max_message_queue_size=1))
    yield s
    await s.close()


@pytest.mark.parametrize("failure", [RuntimeError("stream broken"), asyncio.CancelledError()])
async def test_a_batch_that_could_not_be_written_is_put_back(store, failure):
    sent = await store.send(SendRequest("wf", "a", "b", "t", b"{}"))
    servicer = A2AServicer(store, store.settings)
    context = FakeContext(fail_write=failure)
    request = pb.SubscribeRequest(workflow_id="wf", agent_id="b")
    if isinstance(failure, asyncio.CancelledError):
        with pytest.raises(asyncio.CancelledError):
            await servicer.Subscribe(request, context)
    else:
        await asyncio.wait_for(servicer.Subscribe(request, context), 5.0)
    [again] = await store.receive("wf", "b", max_messages=1, timeout=0)
    assert again.message.message_id == sent.message_id and again.delivery_count == 1


async def test_subscribe_ends_when_the_store_closes(store):
    servicer = A2AServicer(store, store.settings)
    task = asyncio.create_task(servicer.Subscribe(pb.SubscribeRequest(workflow_id="wf", agent_id="b"), FakeContext()))
    await asyncio.sleep(0.05)
    await store.close()
    await asyncio.wait_for(task, 5.0)


def meta(code: str, param: str) -> dict[str, str]:
    return {"a2a-error-code": code, "a2a-error-param": param}


@pytest.mark.parametrize(
    ("call", "code", "metadata"),
    [
        ("full", grpc.StatusCode.RESOURCE_EXHAUSTED, meta("queue_full", "target_agent")),
        ("missing", grpc.StatusCode.NOT_FOUND, meta("workflow_not_found", "workflow_id")),
        ("bad_batch", grpc.StatusCode.INVALID_ARGUMENT, meta("out_of_range", "max_messages")),
        ("bad_lease", grpc.StatusCode.INVALID_ARGUMENT, meta("out_of_range", "visibility_timeout_seconds")),
    ],
)
async def test_errors_become_status_codes_with_metadata(store, call, code, metadata):
    servicer = A2AServicer(store, store.settings)
    context = FakeContext()
    await store.send(SendRequest("wf", "a", "b", "t", b"{}"))
    with pytest.raises(Aborted):
        if call == "full":
            await servicer.SendMessage(
                pb.SendMessageRequest(workflow_id="wf", source_agent="a", target_agent="b"), context
            )
        elif call == "missing":
            await servicer.GetWorkflowStatus(pb.GetWorkflowStatusRequest(workflow_id="nope"), context)
        elif call == "bad_batch":
            await servicer.ReceiveMessages(
                pb.ReceiveMessagesRequest(workflow_id="wf", agent_id="b", max_messages=0), context
            )
        else:
            await servicer.ReceiveMessages(
                pb.ReceiveMessagesRequest(workflow_id="wf", agent_id="b", ack=True, visibility_timeout_seconds=-1),
                context,
            )
    assert context.aborted is not None
    assert context.aborted[0] == code and context.aborted[2] == metadata


async def test_unexpected_errors_become_internal_without_details(store):
    class Broken(MemoryStore):
        async def stats(self):
            raise ZeroDivisionError("secret detail")

    servicer = A2AServicer(Broken(Settings()), Settings())
    context = FakeContext()
    with pytest.raises(Aborted):
        await servicer.GetStats(pb.GetStatsRequest(), context)
    assert context.aborted == (grpc.StatusCode.INTERNAL, "internal error", {})
