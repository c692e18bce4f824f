import orjson
import pytest

from extproc.config import MAX_ID_LENGTH
from extproc.errors import BadRequest
from extproc.metadata import ContextSharing, WorkflowMetadata, metadata_from_headers, parse_llm_body


def body(**fields: object) -> bytes:
    return orjson.dumps({"model": "m", "prompt": "hi", **fields})


def test_full_metadata_is_parsed_and_stripped() -> None:
    meta = {"workflow_id": "wf-1", "agent_id": "a", "parent_request_id": "p", "workflow_priority": 2,
            "context_sharing_strategy": "broadcast"}
    result = parse_llm_body(body(workflow_metadata=meta), None, strip_metadata=True)
    assert result.metadata == WorkflowMetadata("wf-1", "a", "p", 2.0, ContextSharing.BROADCAST)
    assert result.rewritten_body is not None
    assert orjson.loads(result.rewritten_body) == {"model": "m", "prompt": "hi"}


def test_defaults() -> None:
    result = parse_llm_body(body(workflow_metadata={"workflow_id": "wf"}), None, strip_metadata=True)
    assert result.metadata == WorkflowMetadata("wf", None, None, 1.0, ContextSharing.AUTO)


def test_keep_metadata_leaves_body_unchanged() -> None:
    result = parse_llm_body(body(workflow_metadata={"workflow_id": "wf"}), None, strip_metadata=False)
    assert result.metadata is not None and result.rewritten_body is None


def test_no_metadata_no_rewrite() -> None:
    result = parse_llm_body(body(), None, strip_metadata=True)
    assert result.metadata is None and result.rewritten_body is None


def test_body_wins_over_headers_and_headers_fill_in() -> None:
    from_headers = metadata_from_headers("wf-header", "agent-h")
    result = parse_llm_body(body(workflow_metadata={"workflow_id": "wf-body"}), from_headers, strip_metadata=True)
    assert result.metadata is not None and result.metadata.workflow_id == "wf-body"
    assert result.metadata.agent_id is None
    assert parse_llm_body(body(), from_headers, strip_metadata=True).metadata == from_headers


def test_null_metadata_means_absent_but_is_stripped() -> None:
    result = parse_llm_body(body(workflow_metadata=None), None, strip_metadata=True)
    assert result.metadata is None
    assert result.rewritten_body is not None and b"workflow_metadata" not in result.rewritten_body


def test_none_strategy_opts_out_of_affinity() -> None:
    meta = {"workflow_id": "wf", "context_sharing_strategy": "none"}
    parsed = parse_llm_body(body(workflow_metadata=meta), None, strip_metadata=True).metadata
    assert parsed is not None and not parsed.wants_affinity


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (b"", None, "invalid_json"),
        (b"{not json", None, "invalid_json"),
        (b"[1, 2]", None, "invalid_json"),
        (b'"text"', None, "invalid_json"),
        (b"\xff\xfe{}", None, "invalid_json"),
        (b"[" * 5000 + b"]" * 5000, None, "invalid_json"),
        (body(workflow_metadata="wf"), "workflow_metadata", "invalid_type"),
        (body(workflow_metadata=[]), "workflow_metadata", "invalid_type"),
        (body(workflow_metadata={}), "workflow_metadata.workflow_id", "missing_field"),
        (body(workflow_metadata={"workflow_id": 7}), "workflow_metadata.workflow_id", "invalid_type"),
        (body(workflow_metadata={"workflow_id": ""}), "workflow_metadata.workflow_id", "invalid_value"),
        (body(workflow_metadata={"workflow_id": "   "}), "workflow_metadata.workflow_id", "invalid_value"),
        (body(workflow_metadata={"workflow_id": "x" * (MAX_ID_LENGTH + 1)}), "workflow_metadata.workflow_id",
         "too_long"),
        (body(workflow_metadata={"workflow_id": "a\nb"}), "workflow_metadata.workflow_id", "invalid_value"),
        (body(workflow_metadata={"workflow_id": "wf", "agent_id": 1}), "workflow_metadata.agent_id",
         "invalid_type"),
        (body(workflow_metadata={"workflow_id": "wf", "parent_request_id": ""}),
         "workflow_metadata.parent_request_id", "invalid_value"),
        (body(workflow_metadata={"workflow_id": "wf", "workflow_priority": "high"}),
         "workflow_metadata.workflow_priority", "invalid_type"),
        (body(workflow_metadata={"workflow_id": "wf", "workflow_priority": True}),
         "workflow_metadata.workflow_priority", "invalid_type"),
        (body(workflow_metadata={"workflow_id": "wf", "workflow_priority": -1}),
         "workflow_metadata.workflow_priority", "invalid_value"),
        (body(workflow_metadata={"workflow_id": "wf", "context_sharing_strategy": "sometimes"}),
         "workflow_metadata.context_sharing_strategy", "invalid_value"),
        (body(workflow_metadata={"workflow_id": "wf", "context_sharing_strategy": 3}),
         "workflow_metadata.context_sharing_strategy", "invalid_type"),
        (body(workflow_metadata={"workflow_id": "wf", "workflowid": "typo"}), "workflow_metadata.workflowid",
         "unknown_field"),
    ],
)
def test_bad_input_names_the_problem(raw: bytes, param: str | None, code: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_llm_body(raw, None, strip_metadata=True)
    assert info.value.param == param
    assert info.value.code == code
    error = orjson.loads(info.value.to_json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_huge_float_priority_is_rejected() -> None:
    raw = b'{"prompt": "x", "workflow_metadata": {"workflow_id": "w", "workflow_priority": 1e999}}'
    with pytest.raises(BadRequest):
        parse_llm_body(raw, None, strip_metadata=True)


@pytest.mark.parametrize(("wid", "aid"), [("", None), ("x" * 300, None), ("ok", "a\x00b"), ("a b", None),
                                         ("a/b", None), ("..", None), ("ok", "ag\u00e9nt")])
def test_bad_headers(wid: str, aid: str | None) -> None:
    with pytest.raises(BadRequest):
        metadata_from_headers(wid, aid)


def test_no_header_no_metadata() -> None:
    assert metadata_from_headers(None, "agent") is None
