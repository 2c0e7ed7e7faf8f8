"""Security defaults and bad input, over a real loopback socket with httpx."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from assistant.errors import UsageError
from assistant.server.config import ServeConfig, is_loopback
from tests.server.conftest import API_KEY


def test_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")


def test_non_loopback_host_needs_an_api_key():
    with pytest.raises(UsageError, match="without an API key"):
        ServeConfig(host="0.0.0.0").validate()
    ServeConfig(host="0.0.0.0", api_key="long-enough-key").validate()


def test_cli_refuses_non_loopback_without_key():
    p = subprocess.run(
        [sys.executable, "-m", "assistant", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert p.stderr.startswith("error: refusing to listen on 0.0.0.0 without an API key")
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_foreign_host_header_is_refused(smol):
    r = httpx.get(smol.url + "/v1/models", headers={"Host": "evil.example:8080"})
    assert r.status_code == 403
    assert "DNS rebinding" in r.json()["error"]["message"]
    assert httpx.get(smol.url + "/v1/models", headers={"Host": "localhost:1234"}).status_code == 200


def test_foreign_origin_is_refused_and_no_cors_headers(smol):
    r = httpx.post(smol.url + "/api/generate", json={"prompt": "hi"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert r.json() == {"error": r.json()["error"]} and "--cors-origin" in r.json()["error"]
    ok = httpx.get(smol.url + "/v1/models")
    assert not any(h.lower().startswith("access-control") for h in ok.headers)


def test_allowed_origin_gets_cors(small_model):
    from tests.server.conftest import start

    s = start(small_model, cors_origins=("http://localhost:3000",))
    try:
        pre = httpx.options(
            s.url + "/v1/chat/completions",
            headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
        )
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
        r = httpx.get(s.url + "/v1/models", headers={"Origin": "http://localhost:3000"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert httpx.get(s.url + "/v1/models", headers={"Origin": "http://other:1"}).status_code == 403
    finally:
        s.stop()


def test_api_key_missing_wrong_and_right(keyed):
    r = httpx.get(keyed.url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert "required" in r.json()["error"]["message"]
    r = httpx.get(keyed.url + "/v1/models", headers={"Authorization": "Bearer nope-nope-nope"})
    assert r.status_code == 401 and "wrong" in r.json()["error"]["message"]
    assert httpx.get(keyed.url + "/api/tags", headers={"Authorization": "Bearer x"}).json() == {
        "error": "the API key is wrong; send `Authorization: Bearer KEY`"
    }
    assert httpx.get(keyed.url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.get(keyed.url + "/v1/models", headers={"X-Api-Key": API_KEY}).status_code == 200
    assert httpx.get(keyed.url + "/health").status_code == 200  # probes need no key


def test_huge_body_is_refused(keyed):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    big = {"prompt": "x" * (200 * 1024)}
    r = httpx.post(keyed.url + "/v1/completions", json=big, headers=auth)
    assert r.status_code == 413 and "at most 65536" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the cap must hold while reading
        for _ in range(200):
            yield b"x" * 1024

    r = httpx.post(keyed.url + "/v1/completions", content=chunks(), headers=auth)
    assert r.status_code == 413


@pytest.mark.parametrize(
    "path,family", [("/v1/completions", "openai"), ("/api/generate", "ollama"), ("/infill", "llamacpp")]
)
def test_bad_json_in_each_api_shape(smol, path, family):
    r = httpx.post(smol.url + path, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    body = r.json()
    if family == "ollama":
        assert isinstance(body["error"], str) and "not valid JSON" in body["error"]
    elif family == "openai":
        assert body["error"]["type"] == "invalid_request_error" and "not valid JSON" in body["error"]["message"]
    else:
        assert body["error"]["code"] == 400 and "not valid JSON" in body["error"]["message"]


def test_wrong_types_negative_max_tokens_unknown_model(smol):
    u = smol.url
    r = httpx.post(u + "/v1/chat/completions", json={"messages": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(u + "/v1/completions", json={"prompt": "x", "temperature": "hot"})
    assert r.status_code == 400 and "'temperature' must be a number, not a string" in r.json()["error"]["message"]
    r = httpx.post(u + "/v1/completions", json={"prompt": "x", "max_tokens": -5})
    assert r.status_code == 400 and "max_tokens must be at least 1" in r.json()["error"]["message"]
    r = httpx.post(u + "/v1/completions", json={"prompt": "x", "stream": "yes"})
    assert r.status_code == 400
    r = httpx.post(u + "/api/generate", json={"prompt": "x", "options": {"num_predict": "many"}})
    assert r.status_code == 400 and "options.num_predict" in r.json()["error"]
    r = httpx.post(u + "/v1/completions", json={"model": "gpt-4", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(u + "/api/chat", json={"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and "not served here" in r.json()["error"]
    r = httpx.post(u + "/v1/completions", json=[1, 2])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = httpx.get(u + "/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    r = httpx.get(u + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    long = "word " * 1500  # more tokens than the 1024-token context
    r = httpx.post(u + "/v1/completions", json={"prompt": long, "stream": True})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_no_prompts_in_the_log(small_model, caplog):
    from tests.server.conftest import start

    caplog.set_level("INFO", logger="assistant.server")
    s = start(small_model)
    try:
        httpx.post(s.url + "/v1/completions", json={"prompt": "SECRET-PROMPT-TEXT", "max_tokens": 2}, timeout=60)
    finally:
        s.stop()
    assert "/v1/completions 200" in caplog.text
    assert "SECRET-PROMPT-TEXT" not in caplog.text
