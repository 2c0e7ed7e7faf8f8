"""Issue 18 at the engine: seeds that llama.cpp cannot reproduce, chat templates that refuse
a system message or do not compile. Real SmolLM2 GGUF copies through real llama-cpp-python."""

from __future__ import annotations

import pytest

from assistant.errors import AssistantError, UsageError
from assistant.runtime.engine import MAX_SEED, Engine, EngineConfig, Sampling
from assistant.runtime.prompts import Request
from assistant.store.resolve import HashCache, resolve
from tests.cli.test_hardening import BROKEN, REFUSES_SYSTEM, SMOL, _with_template


@pytest.fixture(scope="module")
def smol(lock, tmp_path_factory):
    model = resolve(SMOL, lock, HashCache(tmp_path_factory.mktemp("hc") / "h.json"))
    with Engine(model, EngineConfig(n_ctx=512, n_threads=1)) as e:
        yield e


@pytest.mark.parametrize("seed", [MAX_SEED + 1, 2**32, 2**64, -1])
def test_seeds_outside_what_llama_cpp_reproduces_are_refused(smol, seed):
    with pytest.raises(UsageError, match="out of range"):
        smol.generate("def f():", Sampling(max_tokens=4, temperature=0.8, seed=seed))


def test_the_top_seed_reproduces(smol):
    s = Sampling(max_tokens=24, temperature=1.0, seed=MAX_SEED)
    a, b = smol.generate("Once upon a time", s), smol.generate("Once upon a time", s)
    assert a.seed == MAX_SEED and a.text == b.text


def _engine(path, lock, tmp_path):
    model = resolve(str(path), lock, HashCache(tmp_path / "h.json"))
    return Engine(model, EngineConfig(n_ctx=256, n_threads=1))


def test_a_refused_system_message_is_folded_into_the_user_turn(lock, tmp_path):
    path = _with_template(_smol_path(lock), tmp_path / "g.gguf", REFUSES_SYSTEM)
    with _engine(path, lock, tmp_path) as e:
        prompt = e.render(Request("write add(a, b)"), system="Answer in Python.")
        assert "<|im_start|>system" not in prompt
        assert "<|im_start|>user\nAnswer in Python.\n\nwrite add(a, b)<|im_end|>" in prompt
        assert e.render(Request("hi"), system=None) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_template_that_does_not_compile_still_loads_for_completion(lock, tmp_path):
    path = _with_template(_smol_path(lock), tmp_path / "b.gguf", BROKEN)
    with _engine(path, lock, tmp_path) as e:
        with pytest.raises(AssistantError, match="does not parse.*template line 1"):
            e.render(Request("hi"))
        assert e.render(Request("def f():"), style="completion") == "def f():"
        assert e.generate("def f():", Sampling(max_tokens=4)).timings.generated_tokens > 0


def _smol_path(lock):
    from assistant.store.resolve import locate

    return locate(lock.get(SMOL), lock)
