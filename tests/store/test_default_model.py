"""The default path on real models: `assistant generate` with no --model, and the lock's prompt recipes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from assistant.codegen.generate import GenerateOptions, generate, system_message
from assistant.runtime.engine import EngineConfig, Sampling
from assistant.runtime.prompts import DEFAULT_SYSTEM, Request
from assistant.store.lockfile import Lock, save_lock
from tests.store.test_pull import ASSISTANT, entry, split_model

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud."


@pytest.mark.slow
def test_generate_without_model_uses_the_qwen_default(default_model_env, lock):
    done = subprocess.run(
        [
            *ASSISTANT,
            "generate",
            "Write a Python function is_even(n) that returns True for even n.",
            "--json",
            "-n",
            "48",
            "--threads",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    default = lock.get(lock.default)
    assert d["model"]["name"] == "qwen2.5-coder-0.5b-instruct" == default.name
    assert d["model"]["sha256"] == default.sha256 and d["model"]["quantization"] == "Q4_K_M"
    assert d["sampling"]["stop"] == ["<|im_end|>", "<|endoftext|>"]
    assert "def is_even" in d["text"]


@pytest.mark.slow
def test_the_recipe_sends_the_templates_own_system_message(default_model_env):
    options = GenerateOptions(engine=EngineConfig(n_ctx=512, n_threads=2), sampling=Sampling(max_tokens=1, seed=0))
    result = generate(Request("def add(a, b):"), options)
    assert result.model.name == "qwen2.5-coder-0.5b-instruct" and result.model.system == ""
    assert QWEN_SYSTEM in result.generation.prompt and DEFAULT_SYSTEM not in result.generation.prompt
    assert "fim" in result.model.capabilities
    assert system_message("Be terse.", result.model) == "Be terse."  # --system wins over the recipe
    assert system_message("", result.model) == ""


def test_a_model_without_a_system_recipe_gets_the_tools_default(engine):
    options = GenerateOptions(
        model="smollm2-135m-instruct",
        engine=EngineConfig(n_ctx=512, n_threads=2),
        sampling=Sampling(max_tokens=4, seed=0),
    )
    result = generate(Request("hi"), options)
    assert result.model.system is None and DEFAULT_SYSTEM in result.generation.prompt
    assert result.model.capabilities == ("chat", "completion")


@pytest.mark.slow
def test_first_use_of_a_missing_default_pulls_it_with_progress_then_generates(tmp_path, small_model, store, house):
    """A real model split into real wheels: a fresh store, `assistant generate` with no --model."""
    data = small_model.path.read_bytes()
    parts = split_model(house, "smol", data, 2)
    real = small_model.entry
    lock = Lock(
        path=tmp_path / "models.lock",
        default="smol",
        models=(entry("smol", parts, data, prompt_style="chat", stop=real.stop, context_length=real.context_length),),
    )
    save_lock(lock)
    env = {k: v for k, v in os.environ.items() if k != "ASSISTANT_MODEL"}
    done = subprocess.run(
        [*ASSISTANT, "generate", "Say hi.", "-n", "8", "--seed", "1", "--lock", str(lock.path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "pull smol: part 1/2 smol-part1==1.0" in done.stderr and "part 2/2" in done.stderr
    assert done.stdout.strip()
    again = subprocess.run(
        [*ASSISTANT, "generate", "Say hi.", "-n", "8", "--seed", "1", "--lock", str(lock.path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert again.returncode == 0 and "pull" not in again.stderr and again.stdout == done.stdout
