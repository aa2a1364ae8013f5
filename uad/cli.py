"""How stage scripts start: load params.yaml, run, and report bad input as one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from uad.config import Config, load_config
from uad.errors import UadError


def run_stage(main: Callable[[Config, list[str]], object], argv: list[str] | None = None) -> None:
    """Call `main(cfg, args)`; a `UadError` exits with status 1 and its message, without a traceback."""
    try:
        cfg = load_config("params.yaml")
        main(cfg, sys.argv[1:] if argv is None else argv)
    except UadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
