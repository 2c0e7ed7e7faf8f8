"""Prometheus text metrics: requests, tokens, cancellations, latency histograms, queue depth.

Touched only from the event loop's thread, so plain dicts need no locks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    sums: dict[tuple[str, ...], float] = field(default_factory=lambda: defaultdict(float))

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        row = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        for i, b in enumerate(self.buckets):
            if value <= b:
                row[i] += 1
        row[-1] += 1
        self.sums[labels] += value


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class Metrics:
    requests: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (route, status)
    prompt_tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # model
    cached_tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    generated_tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    generations: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (model, finish)
    cancelled: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # reason
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # model (queue full)
    request_seconds: Histogram = field(default_factory=Histogram)
    ttft_seconds: Histogram = field(default_factory=Histogram)
    queue_seconds: Histogram = field(default_factory=Histogram)
    gauges: dict[str, Callable[[], dict[tuple[str, ...], float]]] = field(default_factory=dict)

    def render(self) -> str:
        out: list[str] = []

        def counter(name: str, help_: str, labels: tuple[str, ...], data: dict) -> None:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} counter")
            for key, v in sorted(data.items()):
                vals = key if isinstance(key, tuple) else (key,)
                out.append(f"{name}{_labels(labels, vals)} {v}")

        def histogram(name: str, help_: str, labels: tuple[str, ...], h: Histogram) -> None:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} histogram")
            for key, row in sorted(h.counts.items()):
                for b, c in zip((*h.buckets, "+Inf"), row, strict=True):
                    le = 'le="' + str(b) + '"'
                    out.append(f"{name}_bucket{_labels(labels, key, le)} {c}")
                out.append(f"{name}_sum{_labels(labels, key)} {h.sums[key]:.6f}")
                out.append(f"{name}_count{_labels(labels, key)} {row[-1]}")

        counter("assistant_requests_total", "HTTP requests by route and status.", ("route", "status"), self.requests)
        counter("assistant_prompt_tokens_total", "Prompt tokens processed or reused.", ("model",), self.prompt_tokens)
        counter(
            "assistant_prompt_tokens_cached_total",
            "Prompt tokens served from the KV cache.",
            ("model",),
            self.cached_tokens,
        )
        counter("assistant_generated_tokens_total", "Tokens generated.", ("model",), self.generated_tokens)
        counter("assistant_generations_total", "Generations by finish reason.", ("model", "finish"), self.generations)
        counter(
            "assistant_cancelled_total",
            "Generations cancelled (disconnect, superseded, deadline).",
            ("reason",),
            self.cancelled,
        )
        counter("assistant_rejected_total", "Requests refused because the queue was full.", ("model",), self.rejected)
        histogram("assistant_request_seconds", "Time from request to the last byte.", ("route",), self.request_seconds)
        histogram(
            "assistant_time_to_first_token_seconds",
            "Time from start of generation to the first token.",
            ("model",),
            self.ttft_seconds,
        )
        histogram(
            "assistant_queue_wait_seconds", "Time spent waiting for a free context.", ("model",), self.queue_seconds
        )
        for name, fn in self.gauges.items():
            out.append(f"# TYPE {name} gauge")
            for key, v in sorted(fn().items()):
                out.append(f"{name}{_labels(('model',), key) if key else ''} {v:g}")
        return "\n".join(out) + "\n"
