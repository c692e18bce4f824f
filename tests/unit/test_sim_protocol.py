import pytest

from benchmarks.simulator.errors import BadRequestError
from benchmarks.simulator.protocol import parse_chat, parse_completion, usage
from benchmarks.simulator.tokenizer import apply_chat_template, encode


def test_completion_prompt_forms():
    assert parse_completion({"prompt": "hello there"}).prompt_token_ids == encode("hello there")
    assert parse_completion({"prompt": ["first one", "second"]}).prompt_token_ids == encode("first one")
    assert parse_completion({"prompt": [1, 2, 3]}).prompt_token_ids == [1, 2, 3]
    assert parse_completion({"prompt": [[4, 5], [6]]}).prompt_token_ids == [4, 5]


def test_defaults_and_options():
    p = parse_completion({"prompt": "x", "model": "m", "stream": True, "stream_options": {"include_usage": True}})
    assert (p.model, p.max_tokens, p.stream, p.include_usage, p.seed) == ("m", 16, True, True, None)
    p = parse_completion({"prompt": "x", "max_tokens": 3, "seed": 9, "temperature": 0.7, "stop": ["\n"]})
    assert (p.max_tokens, p.stream, p.seed) == (3, False, 9)


def test_chat_applies_the_template_and_max_completion_tokens_wins():
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    p = parse_chat({"messages": messages, "max_tokens": 5, "max_completion_tokens": 7})
    assert p.kind == "chat" and p.max_tokens == 7
    assert p.prompt_token_ids == encode(apply_chat_template([{"role": "user", "content": "hi"}]))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([1, 2], None),
        ("text", None),
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": [1.5]}, "prompt"),
        ({"prompt": [True]}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": [2**32]}, "prompt"),
        ({"prompt": [{"a": 1}]}, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": -3}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 2.5}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "10"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"prompt": "x", "model": 3}, "model"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "stream": True, "stream_options": []}, "stream_options"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "x", "seed": "s"}, "seed"),
    ],
)
def test_completion_rejects_bad_input(body, param):
    with pytest.raises(BadRequestError) as info:
        parse_completion(body)
    assert info.value.param == param
    assert info.value.status == 400


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": "hi"},
        {"messages": ["hi"]},
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": 1, "content": "x"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]},
        {"messages": [{"role": "user", "content": ["raw string part"]}]},
    ],
)
def test_chat_rejects_bad_messages(body):
    with pytest.raises(BadRequestError) as info:
        parse_chat(body)
    assert info.value.param == "messages"


def test_usage_shape():
    assert usage(10, 3, 8) == {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "total_tokens": 13,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
