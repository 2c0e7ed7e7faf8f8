"""matplotlib for --plot options: checked before a long run, headless when used."""

from __future__ import annotations

from assistant.errors import AssistantError


def require_matplotlib(error: type[AssistantError] = AssistantError) -> None:
    """Fail before a long run, not after it, when --plot cannot work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise error("--plot needs matplotlib, which is not installed", hint="pip install matplotlib") from None


def pyplot(error: type[AssistantError] = AssistantError):
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    require_matplotlib(error)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
