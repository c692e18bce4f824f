import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.simulator.tokenizer import (
    CHARS_PER_TOKEN,
    FILLER_WORDS,
    apply_chat_template,
    count_tokens,
    encode,
    filler_output,
    message_text,
    pieces,
)


def test_ids_are_crc32_of_pieces_and_stable():
    assert pieces("Hello world") == ["Hell", "o", " wor", "ld"]
    assert encode("Hello world") == [zlib.crc32(p.encode()) for p in ["Hell", "o", " wor", "ld"]]
    assert encode("Hello world") == encode("Hello world")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("a b", ["a", " b"]),
        ("line\n\nnext", ["line", "\n\n", "next"]),
        ("<|eot_id|>x", ["<|eot_id|>", "x"]),
        ("word<|eot_id|>", ["word", "<|eot_id|>"]),
        ("trail  ", ["trai", "l", "  "]),
        ("  indented", ["  in", "dent", "ed"]),
    ],
)
def test_pretokenization(text, expected):
    assert pieces(text) == expected


@given(st.text(max_size=300))
def test_pieces_cover_the_text(text):
    parts = pieces(text)
    assert "".join(parts) == text
    assert len(encode(text)) == len(parts)
    assert all(len(p) <= CHARS_PER_TOKEN for p in parts if not p.startswith(("<|", "\n")))


def test_about_four_chars_per_token_on_english():
    text = "The quick brown fox jumps over the lazy dog while the band plays on. " * 20
    assert 3.0 <= len(text) / count_tokens(text) <= 4.5


def test_extending_at_a_word_boundary_extends_the_ids():
    base = "You are a helpful assistant. Summarise the following document."
    assert encode(base + " And then some more.")[: len(encode(base))] == encode(base)


def test_chat_template_is_llama3_like():
    text = apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_content_parts_and_none():
    assert message_text([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]) == "ab"
    assert message_text(None) == ""
    with pytest.raises(TypeError):
        message_text(5)
    with pytest.raises(TypeError):
        message_text([{"type": "text", "text": 3}])


def test_filler_output_retokenizes_to_the_same_ids():
    ids, texts = filler_output([0, 5, 7, len(FILLER_WORDS) - 1])
    assert len(ids) == 4
    assert encode("".join(texts)) == ids


def test_previous_answer_in_next_turn_keeps_the_prompt_prefix():
    ids, texts = filler_output([1, 2, 3, 4, 5, 6])
    turn1 = apply_chat_template([{"role": "user", "content": "Hi"}])
    turn2 = apply_chat_template(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "".join(texts)},
            {"role": "user", "content": "More"},
        ]
    )
    assert encode(turn2)[: len(encode(turn1)) + len(ids)] == encode(turn1) + ids
