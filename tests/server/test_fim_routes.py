"""FIM over the wire on Qwen2.5-Coder 0.5B: /v1/completions suffix, /api/generate suffix, /infill; KV reuse, supersede."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from tests.server.helpers import metric, wait_for

pytestmark = pytest.mark.slow
PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\n\nassert add(2, 3) == 5\n"


def test_openai_completions_with_suffix_is_fim(qwen, code_model):
    c = openai.OpenAI(base_url=qwen.url + "/v1", api_key="x", max_retries=0, timeout=300)
    r = c.completions.create(model=code_model.name, prompt=PREFIX, suffix=SUFFIX, max_tokens=24, temperature=0)
    assert "a + b" in r.choices[0].text and r.choices[0].finish_reason == "stop"
    streamed = "".join(
        x.choices[0].text
        for x in c.completions.create(
            model=code_model.name, prompt=PREFIX, suffix=SUFFIX, max_tokens=24, temperature=0, stream=True
        )
        if x.choices
    )
    assert streamed == r.choices[0].text


def test_ollama_show_and_generate_with_suffix(qwen, code_model):
    show = httpx.post(qwen.url + "/api/show", json={"model": code_model.name}).json()
    assert ".Suffix" in show["template"] and "<|fim_prefix|>" in show["template"] and "insert" in show["capabilities"]
    with httpx.stream(
        "POST",
        qwen.url + "/api/generate",
        timeout=300,
        json={
            "model": code_model.name,
            "prompt": PREFIX,
            "suffix": SUFFIX,
            "options": {"num_predict": 24, "temperature": 0},
        },
    ) as r:
        lines = [json.loads(x) for x in r.iter_lines() if x]
    text = "".join(x["response"] for x in lines)
    assert "a + b" in text and lines[-1]["done"] and lines[-1]["done_reason"] == "stop"


def test_llamacpp_infill_with_extra_files_and_kv_reuse(qwen):
    body = {
        "input_prefix": "from util import scale\n\ndef double(x):\n    return ",
        "input_suffix": "\n",
        "input_extra": [{"filename": "util.py", "text": "def scale(x, k):\n    return x * k\n"}],
        "n_predict": 16,
        "temperature": 0,
    }
    first = httpx.post(qwen.url + "/infill", json=body, timeout=300).json()
    assert any(s in first["content"] for s in ("scale(", "x * 2", "2 * x")) and first["stop"] is True
    assert "```" not in first["content"]  # the instruct model's chat fence is cut
    assert first["tokens_evaluated"] > 30
    second = httpx.post(
        qwen.url + "/infill", json={**body, "input_prefix": body["input_prefix"] + " "}, timeout=300
    ).json()
    # a one-character edit at the cursor: the cursor line sits after <|fim_middle|>, so the
    # prefix, the suffix and the extra file all come from the KV cache
    assert second["tokens_cached"] >= first["tokens_evaluated"] - 4
    assert second["timings"]["prompt_n"] <= 4


def test_newer_infill_from_the_same_client_supersedes(qwen):
    before = metric(qwen.url, "assistant_cancelled_total", reason="superseded")
    long_body = {
        "input_prefix": "# a list of the first 300 prime numbers\nPRIMES = [",
        "input_suffix": "]\n",
        "n_predict": 400,
        "temperature": 0,
    }
    headers = {"X-Client-Id": "editor-1"}
    out: dict = {}

    def first():
        out["a"] = httpx.post(qwen.url + "/infill", json=long_body, headers=headers, timeout=300).json()

    t = threading.Thread(target=first)
    t.start()
    assert wait_for(lambda: metric(qwen.url, "assistant_busy_contexts") == 1, timeout=60)
    wait_for(lambda: metric(qwen.url, "assistant_generated_tokens_total") > 0, timeout=5)
    b = httpx.post(qwen.url + "/infill", json={**long_body, "n_predict": 4}, headers=headers, timeout=300).json()
    t.join(300)
    assert out["a"]["stop_type"] == "none" and out["a"]["tokens_predicted"] < 400
    assert b["stop"] is True and b["tokens_predicted"] <= 4
    assert metric(qwen.url, "assistant_cancelled_total", reason="superseded") == before + 1
