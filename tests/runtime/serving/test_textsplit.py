"""Text splitting for piecewise generation (no model: fast)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tts_runtime.server.textsplit import split_text


def test_sentences_become_pieces() -> None:
    assert split_text("Hello there. How are you? Fine!  Thanks.", 200) == [
        "Hello there.",
        "How are you?",
        "Fine!",
        "Thanks.",
    ]


def test_closing_quotes_stay_with_their_sentence() -> None:
    assert split_text('She said "stop." Then she left.', 200) == ['She said "stop."', "Then she left."]


def test_long_sentences_are_cut_at_clauses_then_spaces() -> None:
    text = "one two three, four five six seven eight nine ten eleven twelve"
    pieces = split_text(text, 30)
    assert pieces[0] == "one two three,"
    assert all(len(p) <= 30 for p in pieces)
    assert " ".join(pieces) == text


def test_a_word_longer_than_the_limit_is_cut() -> None:
    assert split_text("x" * 50, 20) == ["x" * 20, "x" * 20, "x" * 10]


def test_blank_text_has_no_pieces() -> None:
    assert split_text(" \n\t ", 50) == []


@given(
    st.text(alphabet=st.sampled_from("ab ,.!?\n-"), max_size=400), st.integers(min_value=20, max_value=120)
)
def test_pieces_are_bounded_and_keep_every_word(text: str, limit: int) -> None:
    pieces = split_text(text, limit)
    assert all(0 < len(p) <= limit for p in pieces)
    assert "".join(pieces).replace(" ", "") == "".join(text.split())
