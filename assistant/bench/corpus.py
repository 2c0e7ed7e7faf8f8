"""Benchmark prompts: exact token counts cut from real standard-library source."""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Callable, Sequence

from assistant.bench.config import BenchError


def code_files(min_bytes: int = 16_000) -> list[str]:
    """Real Python source to cut prompts from: the interpreter's standard library (sorted,
    so every worker and every machine with this Python sees the same files)."""
    stdlib = Path(sysconfig.get_path("stdlib"))
    files = [p for p in sorted(stdlib.glob("*.py")) if p.is_file() and p.stat().st_size >= min_bytes]
    if len(files) < 8:  # a zipped or stripped stdlib: fall back to this package's own source
        files = sorted(p for p in Path(__file__).resolve().parents[1].rglob("*.py") if p.stat().st_size >= 2_000)
    if not files:
        raise BenchError(
            "no Python source found to build benchmark prompts from", hint="run with a standard CPython install"
        )
    return [str(p) for p in files]


def _middle(text: str) -> str:
    """The text from the first line break past the middle: code, not a module docstring."""
    cut = text.find("\n", len(text) // 2)
    return text[cut + 1 :] if cut >= 0 else text


def code_prompt(
    tokenize: Callable[[str], list[int]],
    head: Sequence[int],
    n: int,
    index: int,
    files: Sequence[str],
    *,
    middle: bool = False,
) -> list[int]:
    """Exactly ``n`` tokens: ``head`` (BOS, if the model wants one) then source of file
    ``index`` (wrapping through the list), continuing into the next file if it is short."""
    tokens = list(head)[:n]
    i = index
    while len(tokens) < n:
        if i - index >= len(files):
            raise BenchError(f"the prompt corpus has fewer than {n} tokens", hint="lower --prompt-tokens")
        text = Path(files[i % len(files)]).read_text(encoding="utf-8", errors="replace")
        if middle:
            text = _middle(text)
        want = n - len(tokens)
        chars = want * 6 + 256
        while True:
            piece = tokenize(text[:chars])
            if len(piece) >= want or chars >= len(text):
                break
            chars *= 2
        tokens += piece[:want]
        i += 1
    return tokens
