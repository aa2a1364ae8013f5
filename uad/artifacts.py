"""Names and readers of the files the stages hand to each other, and how they are written.

Every output appears whole or not at all: folders are built in a staging folder
beside their destination and renamed into place at the end (`staged_dir`), single
files are written to a temporary sibling and renamed (`atomic_path`). A run that
is killed leaves only staging entries, named `.<name>.partial.<host>.<pid>.*`
(ignored by git and DVC), and the next stage that writes into the same folder, or
names it, removes those whose process is gone. No heavy imports here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from uad.errors import UadError

MODEL_FILE = "model.pt"  # method weights and sizes (torch)
INFO_FILE = "model.json"  # human-readable: backbone, threshold, normal statistics, fit timing
MAPS_FILE = "maps.npy"  # (N, H, W) float32 anomaly maps of the test split
IMAGE_SCORES_FILE = "image_scores.npy"  # (N,) float32
CURVES_FILE = "curves.json"  # thinned ROC/PR curves of the test split (evaluate)
LOSS_FILE = "loss.json"  # per-epoch training losses (train)

_HOST = socket.gethostname().replace(".", "_")


class ArtifactError(UadError, FileNotFoundError):
    """A stage's input that another stage makes is missing or unreadable; the message says which stage."""


_PARTIAL = re.compile(r"^\..+\.partial\.(?P<host>[^.]+)\.(?P<pid>\d+)\.")


def _stale(name: str) -> bool:
    """Whether `name` is a staging entry of a process of this host that no longer runs.

    Entries of other hosts (a shared file system) are not ours to judge and are kept."""
    match = _PARTIAL.match(name)
    if match is None or match["host"] != _HOST:
        return False
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_stale_partials(folder: str | Path) -> None:
    """Delete the staging entries in `folder` left by processes that no longer run (a killed stage)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if _stale(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _staging_prefix(dest: Path) -> str:
    return f".{dest.name}.partial.{_HOST}.{os.getpid()}."


@contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """A temporary folder beside `dest` that replaces `dest` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_staging_prefix(dest), dir=dest.parent))
    try:
        yield tmp
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        elif dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """A temporary path beside the file `dest`; whatever the block writes there replaces `dest` at the end."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dest.parent)
    fd, name = tempfile.mkstemp(prefix=_staging_prefix(dest), suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    """JSON file written atomically (a reader never sees half of it)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | Path, what: str) -> Any:
    """Read a JSON artifact; a missing or damaged one names the stage that makes it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; run the {what} stage first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: damaged ({exc}); rerun the {what} stage") from None


def read_model_info(model_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(model_dir) / INFO_FILE, "train")
