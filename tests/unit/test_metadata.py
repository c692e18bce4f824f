import json
import math
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from extproc.config import ID_CHARSET, MAX_ID_LENGTH, METADATA_FIELD
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


def test_upstream_fields_free_form_metadata_and_null_workflow_id() -> None:
    """Upstream's WorkflowMetadata (production-stack PR #625, b4e2688b, src/vllm_router/models/workflow.py)
    takes a free-form ``metadata`` object and ``workflow_id: None`` (no workflow); priority is 0..10."""
    meta = {"workflow_id": "wf", "metadata": {"team": "x", "n": [1]}, "workflow_priority": 10}
    result = parse_llm_body(body(workflow_metadata=meta), None, strip_metadata=True)
    assert result.metadata == WorkflowMetadata("wf", None, None, 10.0, ContextSharing.AUTO)
    assert result.rewritten_body is not None and b"team" not in result.rewritten_body
    from_headers = metadata_from_headers("wf-header", None)
    nulled = {"workflow_id": None, "agent_id": "a", "parent_request_id": None}
    result = parse_llm_body(body(workflow_metadata=nulled), from_headers, strip_metadata=True)
    assert result.metadata is None and result.prompt_text == "hi"  # no workflow: routed on its prompt
    assert result.rewritten_body is not None and b"workflow_metadata" not in result.rewritten_body
    with pytest.raises(BadRequest) as info:  # the other fields are still checked
        parse_llm_body(body(workflow_metadata={"workflow_id": None, "agent_id": 3}), None, strip_metadata=True)
    assert info.value.param == "workflow_metadata.agent_id"


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
        (body(workflow_metadata={"workflow_id": "wf", "workflow_priority": 10.5}),
         "workflow_metadata.workflow_priority", "invalid_value"),
        (body(workflow_metadata={"workflow_id": "wf", "metadata": "text"}), "workflow_metadata.metadata",
         "invalid_type"),
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


# --- properties (hypothesis) ----------------------------------------------------------------------------------
# Generated bodies mix valid and invalid values on purpose: every one must either parse or raise BadRequest
# (answered 400), never anything else (which would reach Envoy as a failed stream).

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_VALID_ID = re.compile(f"[{ID_CHARSET}]{{1,{MAX_ID_LENGTH}}}")

# Any JSON value the encoders accept, including integers beyond 64 bits (orjson alone would turn those into floats).
json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.integers(-(10**40), 10**40)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
ids = st.one_of(
    st.from_regex(f"[{ID_CHARSET}]{{1,12}}", fullmatch=True),
    st.sampled_from(["", " ", ".", "..", "a b", "a/b", "x" * (MAX_ID_LENGTH + 1), "x" * MAX_ID_LENGTH, "ag\u00e9nt"]),
    st.text(max_size=12),
    json_values,
)
metadata_objects = st.fixed_dictionaries(
    {},
    optional={
        "workflow_id": ids,
        "agent_id": ids,
        "parent_request_id": ids,
        "workflow_priority": st.one_of(st.floats(), st.integers(-5, 10**30), st.booleans(), st.none(), st.text()),
        "context_sharing_strategy": st.one_of(st.sampled_from([s.value for s in ContextSharing]), json_values),
        "workflowid": st.just("typo"),
        "metadata": json_values,
    },
)
bodies = st.fixed_dictionaries(
    {"model": st.text(max_size=10)},
    optional={
        "prompt": st.one_of(st.text(max_size=50), st.lists(st.text(max_size=10), max_size=3), json_values),
        "messages": st.lists(
            st.one_of(st.fixed_dictionaries({"role": st.text(max_size=8), "content": json_values}), json_values),
            max_size=3,
        ),
        METADATA_FIELD: st.one_of(metadata_objects, json_values),
        "max_tokens": json_values,
    },
)
header_pairs = st.tuples(st.none() | ids.filter(lambda x: isinstance(x, str)), st.none() | st.text(max_size=12))


def _assert_valid_id(value: str | None, *, required: bool) -> None:
    if value is None:
        assert not required
        return
    assert _VALID_ID.fullmatch(value) and value not in (".", "..") and value.strip()


def _assert_valid_metadata(meta: WorkflowMetadata) -> None:
    _assert_valid_id(meta.workflow_id, required=True)
    _assert_valid_id(meta.agent_id, required=False)
    _assert_valid_id(meta.parent_request_id, required=False)
    assert math.isfinite(meta.workflow_priority) and 0 <= meta.workflow_priority <= 10
    assert isinstance(meta.context_sharing_strategy, ContextSharing)


@PROPERTY_SETTINGS
@given(st.binary(max_size=300))
@example(b"\xed\xa0\x80")  # a UTF-8-encoded lone surrogate
@example(b'{"a": 1e400}')
@example(b"[" * 1025 + b"]" * 1025)
@example(b'{"workflow_metadata": {"workflow_id": NaN}}')
def test_arbitrary_bytes_parse_or_raise_bad_request(raw: bytes) -> None:
    try:
        result = parse_llm_body(raw, None, strip_metadata=True)
    except BadRequest as error:
        assert error.message and error.code
        assert orjson.loads(error.to_json())["error"]["code"] == error.code
        return
    if result.metadata is not None:
        _assert_valid_metadata(result.metadata)


@PROPERTY_SETTINGS
@given(bodies, header_pairs, st.booleans())
def test_generated_bodies_parse_or_name_the_problem(body_obj: dict[str, Any], headers: tuple[Any, Any],
                                                    strip: bool) -> None:
    try:
        from_headers = metadata_from_headers(*headers)
    except BadRequest as error:
        assert error.param in ("x-workflow-id", "x-agent-id")
        from_headers = None
    raw = json.dumps(body_obj).encode()  # the standard library writes integers of any size
    try:
        result = parse_llm_body(raw, from_headers, strip_metadata=strip)
    except BadRequest as error:
        assert METADATA_FIELD in body_obj, "only workflow_metadata can make an object body invalid"
        assert error.param is not None and error.param.startswith(METADATA_FIELD)
        return
    # Header fallback: the body's object wins as a whole; the headers count only without one (or with null).
    # An object with "workflow_id": null means no workflow at all.
    present = body_obj.get(METADATA_FIELD) is not None
    if present and body_obj[METADATA_FIELD].get("workflow_id", "") is None:
        assert result.metadata is None
    elif present:
        assert result.metadata is not None and result.metadata.workflow_id == body_obj[METADATA_FIELD]["workflow_id"]
        _assert_valid_metadata(result.metadata)
    else:
        assert result.metadata == from_headers
    if strip and METADATA_FIELD in body_obj:
        assert result.rewritten_body is not None
        stripped = {k: v for k, v in body_obj.items() if k != METADATA_FIELD}
        assert json.loads(result.rewritten_body) == stripped  # every other value exactly as sent
        again = parse_llm_body(result.rewritten_body, None, strip_metadata=True)
        assert again.metadata is None and again.rewritten_body is None  # nothing left to strip
        # The routing input of the stripped body is that of the original minus its metadata.
        without = parse_llm_body(json.dumps(stripped).encode(), None, strip_metadata=True)
        assert (again.prompt_text, again.messages) == (without.prompt_text, without.messages)
    else:
        assert result.rewritten_body is None


@PROPERTY_SETTINGS
@given(ids, st.none() | ids)
def test_header_ids_follow_the_id_rules(wid: Any, aid: Any) -> None:
    if not isinstance(wid, str) or not (aid is None or isinstance(aid, str)):
        return  # header values are always strings
    try:
        meta = metadata_from_headers(wid, aid)
    except BadRequest as error:
        assert error.param in ("x-workflow-id", "x-agent-id")
        return
    assert meta is not None
    _assert_valid_metadata(meta)
    assert (meta.workflow_id, meta.agent_id) == (wid, aid)


@PROPERTY_SETTINGS
@given(st.from_regex(f"[{ID_CHARSET}]{{1,8}}", fullmatch=True).filter(lambda s: s not in (".", "..")),
       st.from_regex(f"[{ID_CHARSET}]{{1,8}}", fullmatch=True).filter(lambda s: s not in (".", "..")))
def test_duplicate_keys_the_last_one_wins(first: str, last: str) -> None:
    """orjson keeps the last of duplicate keys; the gateway routes on exactly what the backend will see."""
    raw = (b'{"prompt": "p", "workflow_metadata": {"workflow_id": "%s"}, "workflow_metadata": '
           b'{"workflow_id": "%s", "workflow_id": "%s"}}') % (first.encode(), first.encode(), last.encode())
    result = parse_llm_body(raw, None, strip_metadata=True)
    assert result.metadata is not None and result.metadata.workflow_id == last
    assert result.rewritten_body == b'{"prompt":"p"}'


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"9" * 5000])
def test_non_finite_and_huge_numbers_are_refused_or_rejected(literal: bytes) -> None:
    raw = b'{"prompt": "x", "workflow_metadata": {"workflow_id": "w", "workflow_priority": %s}}' % literal
    with pytest.raises(BadRequest) as info:
        parse_llm_body(raw, None, strip_metadata=True)
    assert info.value.code in ("invalid_json", "invalid_value")


@pytest.mark.parametrize("number", [b"123456789012345678901234", b"-9223372036854775809", b"18446744073709551616",
                                    b"-" + b"9" * 300])
def test_stripping_keeps_integers_beyond_64_bits_exact(number: bytes) -> None:
    """Found by fuzzing: orjson reads such integers as floats, and re-encoding changed the forwarded value."""
    raw = b'{"seed": %s, "prompt": "e+", "workflow_metadata": {"workflow_id": "w"}}' % number
    result = parse_llm_body(raw, None, strip_metadata=True)
    assert result.rewritten_body == b'{"seed":%s,"prompt":"e+"}' % number


@pytest.mark.parametrize("depth", [255, 300, 800])
def test_stripping_a_body_nested_deeper_than_orjson_writes(depth: int) -> None:
    """Found by fuzzing: orjson reads 1024 levels but writes 254; deeper bodies failed the whole stream."""
    nested = b"[" * depth + b"]" * depth
    raw = b'{"workflow_metadata": {"workflow_id": "w"}, "x": %s}' % nested
    result = parse_llm_body(raw, None, strip_metadata=True)
    assert result.rewritten_body == b'{"x":%s}' % nested


def test_stripping_a_body_nested_too_deeply_to_rewrite_is_a_bad_request() -> None:
    raw = b'{"workflow_metadata": {"workflow_id": "w"}, "x": %s}' % (b"[" * 1020 + b"]" * 1020)
    with pytest.raises(BadRequest) as info:
        parse_llm_body(raw, None, strip_metadata=True)
    assert info.value.code == "invalid_json" and "nested too deeply" in info.value.message
    assert parse_llm_body(raw, None, strip_metadata=False).metadata is not None  # nothing to rewrite: fine


_valid_ids = st.from_regex(f"[{ID_CHARSET}]{{1,16}}", fullmatch=True).filter(lambda s: s not in (".", ".."))
valid_metadata = st.fixed_dictionaries({"workflow_id": _valid_ids}, optional={
    "agent_id": _valid_ids, "workflow_priority": st.floats(0, 10),
    "context_sharing_strategy": st.sampled_from([s.value for s in ContextSharing])})


@PROPERTY_SETTINGS
@given(st.dictionaries(st.text(max_size=8).filter(lambda k: k != METADATA_FIELD), json_values, max_size=6),
       valid_metadata, st.integers(0, 6))
def test_stripping_changes_nothing_else(rest: dict[str, Any], meta: dict[str, Any], position: int) -> None:
    items = list(rest.items())
    items.insert(min(position, len(items)), (METADATA_FIELD, meta))
    raw = json.dumps(dict(items)).encode()
    result = parse_llm_body(raw, None, strip_metadata=True)
    assert result.metadata is not None and result.metadata.workflow_id == meta["workflow_id"]
    assert result.rewritten_body is not None
    assert json.loads(result.rewritten_body) == rest
    assert list(json.loads(result.rewritten_body)) == list(rest)  # key order kept too
