"""OpenAI, Ollama and llama.cpp routes on SmolLM2 with the official openai client and httpx."""

from __future__ import annotations

import json

import httpx
import openai
import pytest


@pytest.fixture(scope="module")
def client(smol):
    return openai.OpenAI(base_url=smol.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_served_model(client, small_model):
    ids = [m.id for m in client.models.list().data]
    assert ids == [small_model.name]


def test_chat_not_streamed(client):
    r = client.chat.completions.create(
        model="smollm2-135m-instruct", max_tokens=8, seed=3, messages=[{"role": "user", "content": "Say hello."}]
    )
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streamed_matches_not_streamed(client):
    kw = dict(
        model="smollm2-135m-instruct",
        max_tokens=12,
        temperature=0,
        messages=[{"role": "user", "content": "Name a fruit."}],
    )
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_completions_streamed_and_not_with_stop_and_seed(client):
    kw = dict(
        model="smollm2-135m-instruct",
        prompt="def add(a, b):\n    return",
        max_tokens=16,
        temperature=0.9,
        seed=42,
        stop=["\n"],
    )
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text  # same seed, same text
    assert "\n" not in a.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
    assert streamed == a.choices[0].text


def test_n_choices(client):
    r = client.completions.create(
        model="smollm2-135m-instruct", prompt="x = ", max_tokens=4, n=2, temperature=1.0, seed=1
    )
    assert [c.index for c in r.choices] == [0, 1]


def test_suffix_on_a_model_without_fim_is_refused(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smollm2-135m-instruct", prompt="def f(", suffix="\n", max_tokens=4)
    assert "no fill-in-the-middle tokens" in str(e.value)


def test_ollama_tags_show_generate_chat(smol, small_model):
    u = smol.url
    tags = httpx.get(u + "/api/tags").json()["models"]
    assert tags[0]["name"] == small_model.name and tags[0]["digest"] == small_model.sha256
    show = httpx.post(u + "/api/show", json={"model": small_model.name}).json()
    assert ".Suffix" not in show["template"] and "insert" not in show["capabilities"]
    with httpx.stream(
        "POST", u + "/api/generate", json={"prompt": "Hi", "options": {"num_predict": 6}}, timeout=60
    ) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert all(not x["done"] for x in lines[:-1]) and lines[-1]["done"] is True
    assert lines[-1]["eval_count"] == len(lines) - 1 or lines[-1]["eval_count"] <= 6
    assert lines[-1]["done_reason"] in ("stop", "length")
    r = httpx.post(
        u + "/api/generate",
        json={"prompt": "1, 2, 3,", "raw": True, "stream": False, "options": {"num_predict": 4, "temperature": 0}},
        timeout=60,
    ).json()
    assert r["done"] and r["prompt_eval_count"] > 0 and r["response"]
    r = httpx.post(
        u + "/api/chat",
        json={"messages": [{"role": "user", "content": "Hi"}], "stream": False, "options": {"num_predict": 5}},
        timeout=60,
    ).json()
    assert r["message"]["role"] == "assistant" and r["message"]["content"] and r["done"]
    r = httpx.post(u + "/api/generate", json={"prompt": "x", "suffix": "y"})
    assert r.status_code == 400 and "does not support insert" in r.json()["error"]


def test_infill_on_a_model_without_fim(smol):
    r = httpx.post(smol.url + "/infill", json={"input_prefix": "def f(", "input_suffix": ")"})
    assert r.status_code == 501 and "fill-in-the-middle" in r.json()["error"]["message"]


def test_health_and_metrics(smol):
    assert httpx.get(smol.url + "/health").json() == {"status": "ok"}
    text = httpx.get(smol.url + "/metrics").text
    assert "# TYPE assistant_requests_total counter" in text
    assert 'assistant_queue_depth{model="smollm2-135m-instruct"} 0' in text
    assert "assistant_request_seconds_bucket" in text and "assistant_generated_tokens_total" in text


def test_health_is_503_while_loading(small_model):
    import threading
    import time

    from assistant.server.app import ServerState, ServerThread
    from assistant.server.config import ServeConfig

    state = ServerState(ServeConfig(threads=1, ctx=512), [small_model])
    gate = threading.Event()
    real_load = state.load
    state.load = lambda: (gate.wait(60), real_load())  # type: ignore[method-assign]
    s = ServerThread(state)
    s.thread.start()
    try:
        while not s.server.started:
            time.sleep(0.02)
        r = httpx.get(s.url + "/health")
        assert r.status_code == 503 and r.json()["error"]["message"] == "Loading model"
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and "still loading" in r.json()["error"]["message"]
        gate.set()
        state.ready.wait(60)
        assert httpx.get(s.url + "/health").status_code == 200
    finally:
        gate.set()
        s.stop()
