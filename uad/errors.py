"""The base class of errors caused by the user's data or parameters (reported without a traceback)."""


class UadError(Exception):
    """Bad input: a parameter, a file or a folder; the message names it and what is wrong."""
