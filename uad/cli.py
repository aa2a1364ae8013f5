"""How stage scripts start: load params.yaml, run, and report bad input as one clear line.

A stage dies with the process that started it. DVC runs a stage through a shell,
and when `dvc repro` is killed (kill -9, a closed terminal, a CI timeout) the stage
would otherwise live on, re-parented, and keep writing outputs that a later run with
other params then takes for its own. Linux's parent-death signal covers the direct
parent; a watchdog thread covers the process above an intermediate shell.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from uad.artifacts import remove_stale_partials
from uad.config import Config, Sections, load_config
from uad.errors import UadError, one_line

SHELLS = {"sh", "bash", "dash", "zsh", "fish", "ksh", "busybox"}
WATCH_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(command name, parent pid, start time) of a live process from /proc; None if it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1: raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return name, int(fields[1]), int(fields[19])


def _watched_ancestors() -> list[tuple[int, int]]:
    """(pid, start time) of the parent and, above shells, of the first process that is not a shell."""
    watched, pid = [], os.getppid()
    while pid > 1:
        info = _stat(pid)
        if info is None:
            break
        name, parent, started = info
        watched.append((pid, started))
        if name not in SHELLS:
            break
        pid = parent
    return watched


def die_with_parent() -> None:
    """Make this process end when the process that started it ends (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    watched = _watched_ancestors()
    if os.getppid() != parent or not watched:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while True:
            for pid, started in watched:
                info = _stat(pid)
                if info is None or info[2] != started:
                    print(f"error: the process that started this stage (pid {pid}) is gone; stopping",
                          file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
            threading.Event().wait(WATCH_SECONDS)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _disk_full(exc: OSError, argv: list[str]) -> str:
    where = exc.filename or " ".join(a for a in argv if "/" in a) or os.getcwd()
    return f"no space left on device while writing {where}; free some space and rerun (earlier outputs are intact)"


def run_stage(main: Callable[[Config, list[str]], object], argv: list[str] | None = None,
              sections: Sections = "model") -> None:
    """Call `main(cfg, args)`; bad input and a full disk exit with status 1 and one line, no traceback.

    `sections="model"` reads only the selected method's section of params.yaml, so that a stage
    imports no other method's code; the `validate` stage reads them all."""
    die_with_parent()
    args = sys.argv[1:] if argv is None else argv
    for arg in args:  # what a killed run of this or another stage left in the folders this one uses
        path = Path(arg)
        for folder in (path.parent, path):
            remove_stale_partials(folder)
    try:
        cfg = load_config("params.yaml", sections)
        main(cfg, args)
    except UadError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {one_line(_disk_full(exc, args))}", file=sys.stderr)
        sys.exit(1)
