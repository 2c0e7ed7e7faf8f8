"""The engine on the real embedded SmolLM2 GGUF through real llama-cpp-python."""

import ast

import pytest

from assistant.errors import AssistantError
from assistant.runtime.engine import ContextError, Sampling
from assistant.runtime.prompts import Request, extract_code

ASK = Request("Write a Python function is_even(n) that returns True when n is even.")


def chat(engine, request=ASK):
    return engine.render(request)


def test_greedy_output_is_stable_and_is_code(engine):
    a = engine.generate(chat(engine), Sampling(max_tokens=120, temperature=0))
    b = engine.generate(chat(engine), Sampling(max_tokens=120, temperature=0))
    assert a.text == b.text
    code = extract_code(a.text)
    tree = ast.parse(code)
    assert any(isinstance(n, ast.FunctionDef) and n.name == "is_even" for n in ast.walk(tree))


def test_streaming_equals_non_streaming(engine):
    chunks = []
    streamed = engine.generate(chat(engine), Sampling(max_tokens=80), on_text=chunks.append)
    plain = engine.generate(chat(engine), Sampling(max_tokens=80))
    assert len(chunks) > 5
    assert "".join(chunks) == streamed.text == plain.text


def test_stop_sequence_is_honoured_without_leaking(engine):
    full = engine.generate(chat(engine), Sampling(max_tokens=120)).text
    stop = "return"
    assert stop in full
    chunks = []
    cut = engine.generate(chat(engine), Sampling(max_tokens=120, stop=(stop,)), on_text=chunks.append)
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]
    assert "".join(chunks) == cut.text


def test_same_seed_same_sample_and_seeds_matter(engine):
    prompt = chat(engine, Request("Write a short Python function that greets a user by name."))
    sample = lambda seed: engine.generate(prompt, Sampling(max_tokens=48, temperature=1.0, seed=seed)).text
    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(s) != first for s in (1, 2, 3))


def test_max_tokens_and_timings(engine):
    g = engine.generate(engine.render(Request("def fib(n):"), style="completion"), Sampling(max_tokens=16, stop=()))
    t = g.timings
    if g.finish_reason == "length":
        assert t.generated_tokens == 16
    assert t.prompt_tokens > 0 and t.ttft_s > 0 and t.prompt_tps > 0 and t.load_s > 0
    assert t.decode_tps > 0 and t.total_s >= t.ttft_s + t.decode_s - 1e-6
    # n tokens after the first were decoded in decode_s
    assert t.decode_tps * t.decode_s == pytest.approx(t.generated_tokens - 1, abs=1.01)


def test_prompt_longer_than_the_context(engine):
    long_prompt = "x = 1\n" * 3000
    with pytest.raises(ContextError, match=r"the prompt is \d+ tokens but the context window is 2048"):
        engine.generate(long_prompt, Sampling(max_tokens=8))


def test_empty_prompt(engine):
    with pytest.raises(AssistantError, match="empty"):
        engine.generate("  \n", Sampling(max_tokens=8))


def test_chat_template_is_the_models_own(engine):
    text = engine.render(Request("hi"), system="S")
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert engine.render(Request("tail", context="head"), style="completion") == "head\ntail"
