"""Prompt construction for chat and completion models, and code-block extraction."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_SYSTEM = (
    "You are a careful Python programming assistant. Answer with one complete, runnable "
    "```python code block, then at most two sentences of explanation."
)

FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Request:
    """What the user asked: an instruction plus optional context (for example piped-in code)."""

    prompt: str
    context: str = ""

    def user_message(self) -> str:
        if not self.context.strip():
            return self.prompt
        if not self.prompt.strip():
            return self.context
        return f"{self.context.rstrip()}\n\n{self.prompt}"


def completion_text(request: Request) -> str:
    """Raw prefix for completion-style models: context, then the prompt, continued verbatim."""
    if request.context.strip() and request.prompt.strip():
        return f"{request.context.rstrip()}\n{request.prompt}"
    return request.context or request.prompt


def extract_code(text: str, *, language: str = "python") -> str:
    """The first fenced code block (preferring ``language``), else the text itself.

    An unterminated final fence counts: a small model often runs out of tokens inside it.
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in FENCE_RE.finditer(text)]
    if not blocks:
        return text.strip("\n") + "\n" if text.strip() else ""
    for lang, body in blocks:
        if lang in (language, "py", "python3"):
            return body.rstrip() + "\n"
    return blocks[0][1].rstrip() + "\n"
