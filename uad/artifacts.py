"""Names and readers of the files the stages hand to each other (no heavy imports)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MODEL_FILE = "model.pt"  # method weights and sizes (torch)
INFO_FILE = "model.json"  # human-readable: backbone, threshold, normal statistics, fit timing
MAPS_FILE = "maps.npy"  # (N, H, W) float32 anomaly maps of the test split
IMAGE_SCORES_FILE = "image_scores.npy"  # (N,) float32
CURVES_FILE = "curves.json"  # thinned ROC/PR curves of the test split (evaluate)
LOSS_FILE = "loss.json"  # per-epoch training losses (train)


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def read_json(path: str | Path, what: str) -> Any:
    """Read a JSON artifact; a missing one names the stage that makes it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run the {what} stage first") from None


def read_model_info(model_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(model_dir) / INFO_FILE, "train")


@contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """A temporary folder beside `dest` that replaces `dest` only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial.", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
