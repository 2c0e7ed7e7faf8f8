"""FIM prompts: token lookup by text, trimming, the repository form; real Qwen and SmolLM2 models."""

from __future__ import annotations

import llama_cpp
import pytest

from assistant.errors import UsageError
from assistant.runtime.engine import Engine, EngineConfig, Sampling
from assistant.runtime.fim import (
    ExtraFile,
    FimUnsupported,
    InfillRequest,
    TopLevelStop,
    block_indent,
    build_prompt,
    engine_codec,
    fim_tokens,
    find_fim_tokens,
    infill,
    require_fim,
    split_at,
    suffix_echo_stop,
)

# A character-level stand-in tokenizer: one token per character, ids above the control tokens.
QWEN_TEXTS = {
    "<|fim_prefix|>": 1,
    "<|fim_suffix|>": 2,
    "<|fim_middle|>": 3,
    "<|fim_pad|>": 4,
    "<|repo_name|>": 5,
    "<|file_sep|>": 6,
    "<|endoftext|>": 7,
}
FIM = find_fim_tokens(QWEN_TEXTS.get)


def tok(text: str) -> list[int]:
    return [1000 + ord(c) for c in text]


def detok(ids: list[int]) -> str:
    return "".join(chr(i - 1000) for i in ids)


def test_family_lookup_by_text():
    assert FIM is not None and FIM.family == "qwen" and (FIM.prefix, FIM.suffix, FIM.middle) == (1, 2, 3)
    assert {4, 6, 7} <= FIM.ends
    star = find_fim_tokens({"<fim_prefix>": 10, "<fim_suffix>": 11, "<fim_middle>": 12, "<|endoftext|>": 0}.get)
    assert star is not None and star.family == "starcoder" and star.ends == frozenset({0, 10, 11, 12})
    assert find_fim_tokens({"<|im_start|>": 1}.get) is None


def test_prompt_order_and_no_trimming_when_it_fits():
    p = build_prompt(FIM, InfillRequest("def f():\n    ", "\nprint(f())\n"), 200, tok, detok)
    assert p.tokens == [1, *tok("def f():\n"), 2, *tok("\nprint(f())\n"), 3, *tok("    ")]
    assert (p.prefix_tokens, p.line_tokens) == (len(tok("def f():\n")), 4)
    assert not p.prefix_trimmed and not p.suffix_trimmed


def test_a_keystroke_changes_only_the_tokens_after_the_middle():
    """The cursor line goes after <|fim_middle|>, so typing keeps the cached prefix and suffix."""
    before = build_prompt(FIM, InfillRequest("x = 1\nif x", ":\n    pass\n"), 200, tok, detok)
    after = build_prompt(FIM, InfillRequest("x = 1\nif x ", ":\n    pass\n"), 200, tok, detok)
    shared = before.tokens.index(3) + 1
    assert after.tokens[:shared] == before.tokens[:shared] and after.tokens[shared:] == tok("if x ")


def test_a_very_long_cursor_line_stays_in_the_prefix():
    p = build_prompt(FIM, InfillRequest("a\n" + "z" * 100, "\n"), 120, tok, detok)
    assert p.line_tokens == 0 and p.tokens[-1] == 3 and p.prefix_tokens == 102


def test_trimming_keeps_the_lines_near_the_cursor():
    prefix = "".join(f"line{i}\n" for i in range(100)) + "    x = "
    suffix = "".join(f"after{i}\n" for i in range(100))
    room = 120
    p = build_prompt(FIM, InfillRequest(prefix, suffix), room, tok, detok)
    assert len(p.tokens) <= room and p.prefix_trimmed and p.suffix_trimmed
    text = detok([t for t in p.tokens if t >= 1000])
    pre_text = detok(p.tokens[1 : 1 + p.prefix_tokens])
    suf_text = detok(p.tokens[2 + p.prefix_tokens : -1 - p.line_tokens])
    assert pre_text.endswith("line99\n") and pre_text.startswith("line")
    assert detok(p.tokens[-p.line_tokens :]) == "    x = "  # whole lines from the top
    assert suf_text.startswith("after0\n") and suf_text.endswith("\n")  # whole lines at the bottom
    assert p.prefix_tokens >= 2 * p.suffix_tokens  # the prefix gets most of the room
    assert "line0\n" not in text


def test_short_prefix_leaves_room_to_the_suffix():
    p = build_prompt(FIM, InfillRequest("x = ", "a\n" * 200), 60, tok, detok)
    assert p.line_tokens == 4 and p.suffix_tokens > 40 and len(p.tokens) <= 60


def test_repository_form_with_extra_files_and_dropping():
    extra = (ExtraFile("big.py", "z" * 500), ExtraFile("util.py", "def helper():\n    return 1\n"))
    p = build_prompt(FIM, InfillRequest("helper(", ")\n", extra, "main.py", "proj"), 200, tok, detok)
    assert p.extra_files == ("util.py",) and p.dropped_files == ("big.py",)
    assert p.tokens[0] == 5 and p.tokens[1:6] == tok("proj\n")
    rendered = p.text(FIM, detok)
    assert rendered.startswith(
        "<|repo_name|>proj\n<|file_sep|>util.py\ndef helper():\n    return 1\n"
        "<|file_sep|>main.py\n<|fim_prefix|><|fim_suffix|>)\n<|fim_middle|>helper("
    )


def test_too_little_room_is_an_error():
    with pytest.raises(Exception, match="too few"):
        build_prompt(FIM, InfillRequest("a", "b"), 10, tok, detok)


def test_split_at_cursor():
    assert split_at("ab\ncd\n", 2, 2) == ("ab\nc", "d\n")
    assert split_at("ab\ncd", 2, 3) == ("ab\ncd", "")
    with pytest.raises(UsageError, match="line 4 is outside"):
        split_at("a\nb", 4, 1)
    with pytest.raises(UsageError, match="column 9 is outside line 1"):
        split_at("abc", 1, 9)


def test_suffix_echo_stop_skips_the_cursor_line():
    assert suffix_echo_stop("):\n    return x\n") == "\n    return x"
    assert suffix_echo_stop("\n\nprint(f())\n") == "\nprint(f())"
    assert suffix_echo_stop(")") is None


def test_small_model_without_fim_is_refused(engine):
    assert fim_tokens(engine) is None
    with pytest.raises(FimUnsupported, match=r"no fill-in-the-middle tokens.*qwen2\.5-coder"):
        require_fim(engine)


@pytest.fixture(scope="module")
def qwen_engine(code_model):
    with Engine(code_model, EngineConfig(n_ctx=2048, n_threads=2)) as e:
        yield e


def test_qwen_tokens_match_the_vocab(qwen_engine):
    fim = require_fim(qwen_engine)
    vocab = qwen_engine.llm._model.vocab
    assert fim.family == "qwen"
    assert (fim.prefix, fim.suffix, fim.middle, fim.repo, fim.file_sep) == (151659, 151661, 151660, 151663, 151664)
    assert fim.prefix == llama_cpp.llama_vocab_fim_pre(vocab) and fim.middle == llama_cpp.llama_vocab_fim_mid(vocab)
    assert {151643, 151662, 151664} <= fim.ends  # <|endoftext|>, <|fim_pad|>, <|file_sep|>


def test_user_text_cannot_inject_control_tokens(qwen_engine):
    tokenize, _ = engine_codec(qwen_engine)
    assert 151659 not in tokenize("x = '<|fim_prefix|>'")


@pytest.mark.slow
def test_qwen_fills_a_function_body(qwen_engine):
    req = InfillRequest("def add(a, b):\n    ", "\n\n\nassert add(2, 3) == 5\n")
    r = infill(qwen_engine, req, Sampling(max_tokens=24, seed=0))
    assert "a + b" in r.text and r.generation.finish_reason == "stop"
    again = infill(qwen_engine, req, Sampling(max_tokens=24, seed=0))
    assert again.generation.timings.prompt_tokens == r.generation.timings.prompt_tokens


def test_top_level_stop_ends_at_a_column_zero_line_and_holds_only_newlines():
    stop = TopLevelStop()
    out = [stop.feed(t) for t in ("    return x\n", "\n", "\n", "# Check\ndef f():\n")]
    assert out == ["    return x", "", "", "\n\n\n"] and stop.stopped
    assert stop.feed("more") == "" and stop.flush() == ""
    body = TopLevelStop()
    assert body.feed("a = 1\n") == "a = 1" and body.feed("    b = 2\n") == "\n    b = 2" and not body.stopped
    assert body.flush() == "\n"


def test_block_indent_reads_the_code_around_the_cursor():
    assert block_indent(InfillRequest("def f(x):\n    return ", "\n")) == 4
    assert block_indent(InfillRequest("def f(x):\n", "        y = 1\n    return y\n")) == 8
    assert block_indent(InfillRequest("def f(x):\n    g(", ")\n    return 1\n")) == 4  # not the ")" after the cursor
    assert block_indent(InfillRequest("import os\n", "print(os.sep)\n")) == 0
