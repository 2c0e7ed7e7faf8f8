"""One exception type for everything a user can fix; the CLI prints it as one line."""

from __future__ import annotations


class AssistantError(Exception):
    """A problem with the user's input or environment, with the fix in the message.

    ``exit_code`` lets callers tell usage problems (2) from runtime failures (1).
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(AssistantError):
    exit_code = 2
