"""The export stage's one error type: a user-fixable problem, printed as one line with the fix."""

from __future__ import annotations

from assistant.errors import AssistantError


class ExportError(AssistantError):
    """A checkpoint, tokenizer, GGUF or quantization problem the user can fix."""
