import pytest
from hypothesis import given
from hypothesis import strategies as st

from assistant.errors import UsageError
from assistant.runtime.stops import StopFilter, apply_stops, unescape


def stream(chunks, stops):
    f = StopFilter(tuple(stops))
    out = [f.feed(c) for c in chunks]
    out.append(f.flush())
    return out, f.stopped


def test_stop_split_across_chunks_never_leaks():
    out, stopped = stream(["def f():\n    return 1\n", "\nd", "ef g", "():"], ["\ndef "])
    assert stopped
    assert "".join(out) == "def f():\n    return 1\n"
    assert not any("\nd" in piece for piece in out)


def test_partial_stop_is_released_when_it_turns_out_not_to_be_one():
    out, stopped = stream(["abc\n", "de", "x"], ["\ndef"])
    assert not stopped
    assert out[0] == "abc"  # "\n" held back: it could start the stop
    assert "".join(out) == "abc\ndex"


def test_earliest_of_several_stops_wins():
    assert apply_stops("a END b STOP c", ("STOP", "END")) == "a "


def test_held_text_is_flushed_at_the_end():
    out, stopped = stream(["hello <|im"], ["<|im_end|>"])
    assert not stopped and "".join(out) == "hello <|im"
    assert out[0] == "hello "


def test_no_stops_is_a_pass_through():
    out, _ = stream(["a", "b"], [])
    assert out == ["a", "b", ""]


@given(
    text=st.text(alphabet="ab\nd ef", max_size=60),
    stops=st.lists(st.text(alphabet="ab\nd ef", min_size=1, max_size=5), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=10),
)
def test_any_chunking_gives_the_unchunked_answer(text, stops, cuts):
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    out, _ = stream(chunks, stops)
    joined = "".join(out)
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    assert joined == text[: min(hits, default=len(text))]
    for s in stops:
        assert s not in joined


@pytest.mark.parametrize(
    "raw, meant",
    [
        (r"\ndef ", "\ndef "),
        (r"\n\n", "\n\n"),
        (r"\t", "\t"),
        (r"a\\n", "a\\n"),
        (r"\x41\u00e9\U0001F600", "Aé😀"),
        ("</s>", "</s>"),
        (r"\"", '"'),
    ],
)
def test_unescape_gives_what_the_user_meant(raw, meant):
    assert unescape(raw) == meant


@pytest.mark.parametrize(
    "raw, needle",
    [
        (r"\q", "unknown escape"),
        ("end\\", "lone backslash"),
        (r"\x4", "needs 2 hex digits"),
        (r"\uD800", "not a Unicode character"),
    ],
)
def test_bad_escapes_are_usage_errors(raw, needle):
    with pytest.raises(UsageError, match=needle):
        unescape(raw)
