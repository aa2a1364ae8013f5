"""The base class of errors caused by the user's data or parameters (reported without a traceback)."""

from __future__ import annotations

MAX_MESSAGE = 2000  # characters of one error line; a crafted name or value cannot make it longer


class UadError(Exception):
    """Bad input: a parameter, a file or a folder; the message names it and what is wrong."""


class ConfigError(UadError, ValueError):
    """A parameter value that cannot be used; the message names the parameter."""


def shorten(text: str, limit: int = 120, quote: bool = True) -> str:
    """`text` for an error message: quoted like repr (control characters escaped), at most `limit`
    characters with the middle elided, so a hostile name cannot flood a log."""
    shown = repr(text) if quote else text
    if len(shown) <= limit:
        return shown
    keep = (limit - 5) // 2
    return f"{shown[:keep]}[...]{shown[-keep:]}"


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """An error message as one bounded line (newlines folded)."""
    return shorten(" ".join(message.split()), limit, quote=False)
