"""Cancellation on disconnect, the bounded queue and 503, over real sockets (SmolLM2)."""

from __future__ import annotations

import httpx
import pytest

from tests.server.helpers import metric, wait_for

LONG = {"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 800, "temperature": 0, "stream": True}


def _first_event(stream):
    """Read up to the first event; return the live line iterator (dropping it would close the stream)."""
    lines = stream.iter_lines()
    for line in lines:
        if line.startswith("data: "):
            return lines
    raise AssertionError("the stream ended without an event")


def test_disconnect_mid_stream_stops_the_generation(smol):
    before = metric(smol.url, "assistant_cancelled_total", reason="disconnect")
    tokens_before = metric(smol.url, "assistant_generated_tokens_total")
    with httpx.Client(timeout=60) as c, c.stream("POST", smol.url + "/v1/completions", json=LONG) as r:
        assert r.status_code == 200
        _first_event(r)
    assert wait_for(lambda: metric(smol.url, "assistant_cancelled_total", reason="disconnect") == before + 1)
    generated = metric(smol.url, "assistant_generated_tokens_total") - tokens_before
    assert 0 < generated < 200  # far short of the 800 asked for
    assert metric(smol.url, "assistant_busy_contexts") == 0


def test_non_streamed_client_timeout_cancels(smol):
    before = metric(smol.url, "assistant_cancelled_total", reason="disconnect")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(smol.url + "/v1/completions", json={**LONG, "stream": False}, timeout=1.0)
    assert wait_for(lambda: metric(smol.url, "assistant_cancelled_total", reason="disconnect") == before + 1)


def test_beyond_parallel_and_queue_waits_then_503(smol):
    rejected = metric(smol.url, "assistant_rejected_total")
    with httpx.Client(timeout=60) as a, httpx.Client(timeout=60) as b:
        with a.stream("POST", smol.url + "/v1/completions", json=LONG) as ra:
            live = _first_event(ra)  # running on the only context
            with b.stream(
                "POST",
                smol.url + "/api/generate",
                json={"prompt": "1, 2, 3,", "raw": True, "options": {"num_predict": 3}},
            ) as rb:
                assert wait_for(lambda: metric(smol.url, "assistant_queue_depth") == 1)
                full = httpx.post(
                    smol.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
                )
                assert full.status_code == 503 and full.headers["retry-after"] == "1"
                assert full.json()["error"]["code"] == "queue_full"
                assert metric(smol.url, "assistant_rejected_total") == rejected + 1
                del live
                ra.close()  # the running request goes away: the queued one gets the context
                lines = [x for x in rb.iter_lines() if x]
                assert lines and '"done": true' in lines[-1]
    assert wait_for(lambda: metric(smol.url, "assistant_busy_contexts") == 0)
