"""Reading /metrics in tests."""

from __future__ import annotations

import re
import time

import httpx


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one series from /metrics (0 when it is not there yet)."""
    text = httpx.get(url + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pat = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
    total = 0.0
    for m in pat.finditer(text):
        got = (m.group(1) or "{}")[1:-1]
        if all(p in got.split(",") for p in want.split(",") if p):
            total += float(m.group(2))
    return total


def wait_for(fn, timeout: float = 30.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(step)
    return False
