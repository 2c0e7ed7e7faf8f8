"""Editor latency of `assistant serve`: a single-line infill with a ~2,000-token prefix, cold and after
a one-character edit (KV-prefix reuse), and the server's decode tokens/s against the engine called
directly, all in one run (ratios within the run), plus `assistant --help` start-up time.

    python benchmarks/serve_latency.py --model qwen2.5-coder-0.5b-instruct --threads 2 --repeats 10 \
        --out benchmarks/results/serve_latency-0.5b.json

The prefix is real Python (the standard library's ``textwrap.py``, then ``difflib.py`` as needed)
cut at a line start to about ``--prefix-tokens`` tokens; the suffix is the next 10 lines. "Cold"
changes the file's first line, so nothing but the empty cache can be reused; "edit" types one
more character at the cursor, as an editor does on a keystroke. Times are client-side, over a
real loopback socket with the streaming /v1/completions route (suffix = FIM): time to the first
streamed piece (TTFT) and to the end. The server is a real ``assistant serve`` process, as an
editor meets it (the client is another process, not a thread sharing the server's GIL); the
engine-direct decode runs in this process while the server idles. Run it alone: the machine is
shared, one busy model process at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def code_text() -> str:
    import difflib
    import textwrap

    return Path(textwrap.__file__).read_text() + "\n" + Path(difflib.__file__).read_text()


def make_case(engine, prefix_tokens: int) -> tuple[str, str]:
    """(prefix, suffix): whole lines of real code, the prefix about ``prefix_tokens`` long, cursor at an indent."""
    lines = code_text().splitlines(keepends=True)

    def tokenize(s: str) -> list[int]:
        return engine.llm.tokenize(s.encode(), add_bos=False, special=False)

    n, cut = 0, 0
    for i, line in enumerate(lines):
        n += len(tokenize(line))
        if n >= prefix_tokens and line.startswith("        ") and lines[i + 1].startswith("        "):
            cut = i + 1
            break
    nxt = lines[cut]
    indent = nxt[: len(nxt) - len(nxt.lstrip())]
    prefix = "".join(lines[:cut]) + indent
    suffix = "\n" + "".join(lines[cut + 1 : cut + 11])  # the cursor's line (nxt) is what the model fills
    return prefix, suffix


def stream_once(client, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    first = last = None
    pieces = 0
    usage = {}
    text = []
    with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if obj.get("usage"):
                usage = obj["usage"]
            for ch in obj.get("choices", []):
                if ch.get("text"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    pieces += 1
                    text.append(ch["text"])
    end = time.perf_counter()
    return {
        "ttft_s": (first or end) - t0,
        "total_s": end - t0,
        "first_s": first,
        "last_s": last,
        "tokens": usage.get("completion_tokens", pieces),
        "text": "".join(text),
    }


@contextlib.contextmanager
def serve_process(model: str, threads: int, ctx: int) -> Iterator[str]:
    """``assistant serve`` on a free loopback port; yields its URL once /health says ready."""
    import httpx

    cmd = [sys.executable, "-m", "assistant", "serve", "-m", model, "--port", "0"]
    cmd += ["--threads", str(threads), "--ctx", str(ctx), "--parallel", "1", "--queue", "4"]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stderr.readline() if p.stderr else ""
        m = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        if not m:
            raise SystemExit(f"assistant serve did not start: {line.strip() or p.wait()}")
        url = m.group(1)
        deadline = time.monotonic() + 300
        while httpx.get(url + "/health").status_code != 200:
            if p.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("assistant serve did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def help_time(runs: int = 5) -> float:
    exe = Path(sys.executable).with_name("assistant")
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "assistant", "--help"]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--prefix-tokens", type=int, default=2000)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_latency.json"))
    args = ap.parse_args()

    import httpx

    from assistant.atomic import atomic_write_text
    from assistant.codegen.generate import load_model
    from assistant.runtime.engine import Engine, EngineConfig, Sampling
    from assistant.runtime.prompts import Request

    resolved = load_model(args.model)
    rows: dict[str, list[dict]] = {"cold": [], "edit": []}
    decode: dict[str, list[float]] = {"engine": [], "server": []}
    with (
        serve_process(resolved.name, args.threads, 4096) as server_url,
        Engine(resolved, EngineConfig(n_ctx=4096, n_threads=args.threads)) as engine,
        httpx.Client(timeout=600) as client,
    ):
        prefix, suffix = make_case(engine, args.prefix_tokens)
        url = server_url + "/v1/completions"
        base = {
            "model": resolved.name,
            "max_tokens": 32,
            "temperature": 0,
            "stop": ["\n"],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        stream_once(client, url, {**base, "prompt": "# warm-up\n" + prefix, "suffix": suffix})
        for i in range(args.repeats):
            p = f"# revision {i}\n" + prefix
            rows["cold"].append(stream_once(client, url, {**base, "prompt": p, "suffix": suffix}))
            rows["edit"].append(stream_once(client, url, {**base, "prompt": p + "r", "suffix": suffix}))
        prompt_tokens = len(engine.tokenize(prefix))
        chat = engine.render(
            Request("Write a long Python module with ten small utility functions, each with a docstring."),
            style="chat",
        )
        dbody = {
            "model": resolved.name,
            "prompt": chat,
            "max_tokens": args.decode_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for _ in range(max(3, args.repeats // 2)):
            g = engine.generate(chat, Sampling(max_tokens=args.decode_tokens, temperature=0.0))
            decode["engine"].append(g.timings.decode_tps)
            r = stream_once(client, url, dbody)
            if r["tokens"] > 1 and r["last_s"] and r["first_s"] and r["last_s"] > r["first_s"]:
                decode["server"].append((r["tokens"] - 1) / (r["last_s"] - r["first_s"]))
    summary = {
        "model": resolved.name,
        "sha256": resolved.sha256,
        "threads": args.threads,
        "prefix_tokens": prompt_tokens,
        "repeats": args.repeats,
        "machine": platform.processor() or platform.machine(),
        "latency_ms": {
            k: {
                "ttft_p50": pct([r["ttft_s"] for r in v], 0.5) * 1000,
                "ttft_p90": pct([r["ttft_s"] for r in v], 0.9) * 1000,
                "total_p50": pct([r["total_s"] for r in v], 0.5) * 1000,
                "total_p90": pct([r["total_s"] for r in v], 0.9) * 1000,
            }
            for k, v in rows.items()
        },
        "decode_tps": {k: statistics.median(v) if v else 0.0 for k, v in decode.items()},
        "help_s": help_time(),
        "example_infill": rows["edit"][-1]["text"] if rows["edit"] else "",
    }
    e, s = summary["decode_tps"]["engine"], summary["decode_tps"]["server"]
    summary["decode_ratio"] = s / e if e else 0.0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(summary, indent=2) + "\n")
    print(f"{resolved.name}, {args.threads} threads, prefix {prompt_tokens} tokens, {args.repeats} repeats")
    print(f"{'case':<10}{'TTFT p50':>10}{'TTFT p90':>10}{'total p50':>11}{'total p90':>11}  (ms)")
    for k, v in summary["latency_ms"].items():
        print(f"{k:<10}{v['ttft_p50']:>10.0f}{v['ttft_p90']:>10.0f}{v['total_p50']:>11.0f}{v['total_p90']:>11.0f}")
    print(f"decode tok/s: engine {e:.1f}, server {s:.1f}, ratio {summary['decode_ratio']:.3f}")
    print(f"assistant --help: {summary['help_s']:.3f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
