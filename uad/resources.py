"""Memory and disk room, checked before a large allocation or write (no heavy imports)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from uad.errors import UadError


class RoomError(UadError, MemoryError):
    """Not enough memory or disk for what a stage is about to do; the message says how much."""


def available_ram() -> int:
    """MemAvailable (free plus reclaimable page cache) where Linux reports it, else free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def check_room(need: int, folder: str | Path, what: str, hint: str) -> None:
    """RoomError when `need` bytes exceed the available memory or the free disk under `folder`."""
    ram = available_ram()
    if need > ram:
        raise RoomError(f"{what} need {_gb(need)} of memory, {_gb(ram)} are available; {hint}")
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > free:
        raise RoomError(f"{what} need {_gb(need)} on disk, {_gb(free)} are free under {folder}; {hint}")
