"""Score new images with a trained model: the `uad predict` command.

Inputs are image files or folders (searched recursively, links not followed). Every
image goes through the model's own preprocessing (decoded as prepare does, 16-bit
included, resized to the model's input size with its filter), is scored in batches on
the chosen device, and gets one row in `OUT/predictions.csv` (image, score, anomalous,
error, overlay) and, unless `--no-images`, a heat-map overlay PNG in `OUT/overlays/` at
the image's own size with the verdict and the colour bar. An unreadable file gets a row
with its error and the others go on. Nothing is written outside OUT, whatever the input
file names; the CSV is written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from uad import render
from uad.artifacts import atomic_path, staged_dir
from uad.data.layout import IMAGE_EXTENSIONS
from uad.data.prepared import RESAMPLING, read_image
from uad.errors import UadError, one_line
from uad.methods.base import AnomalyMethod, load
from uad.runtime import resolve_device

COLUMNS = ("image", "score", "anomalous", "error", "overlay")
OVERLAY_MAX_SIDE = 2048  # larger originals get a downscaled overlay


@dataclass
class Row:
    image: str
    score: float | None = None
    anomalous: bool | None = None
    error: str = ""
    overlay: str = ""


def collect(inputs: list[str]) -> list[tuple[str, Path | None, str]]:
    """(as given, path, error) for every image of the inputs: files as they are, folders walked in sorted
    order for image files (not following links); a missing input is a row with its error."""
    found = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=False):
                dirs.sort()
                for name in sorted(files):
                    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        file = Path(root) / name
                        found.append((str(file), file, ""))
        elif path.is_file():
            found.append((arg, path, ""))
        else:
            found.append((arg, None, "not found (neither an image file nor a folder)"))
    return found


def _prepare(path: Path, size: int, resize: str) -> tuple[np.ndarray, np.ndarray]:
    """(the image as 8-bit RGB at its own size, the model input at size x size): decoding as prepare does."""
    image, _ = read_image(path)
    if min(image.size) < 2:
        raise UadError(f"{path}: image is empty ({image.size[0]}x{image.size[1]} pixels)")
    resized = image.resize((size, size), RESAMPLING[resize])
    return np.asarray(image, dtype=np.uint8), np.asarray(resized, dtype=np.uint8)


def _overlay_name(index: int, path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem)[:80]
    return f"{index:06d}_{stem}.png"


def _save_overlay(folder: Path, name: str, original: np.ndarray, scores: torch.Tensor, model: AnomalyMethod,
                  score: float, threshold: float, shown: str) -> None:
    h, w = original.shape[:2]
    scale = min(1.0, OVERLAY_MAX_SIDE / max(h, w))
    size = (max(2, round(h * scale)), max(2, round(w * scale)))
    if scale < 1:
        original = np.asarray(Image.fromarray(original).resize(size[::-1], Image.Resampling.BILINEAR))
    up = F.interpolate(scores[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
    median, pixel = float(model.normal_quantiles[0]), float(model.pixel_threshold)
    picture = render.compose([render.heat_overlay(original, up, median, pixel)], [Path(shown).name[:60]],
                             f"score {score:.3g} (threshold {threshold:.3g})", score > threshold,
                             normal_median=median, threshold=pixel)
    Image.fromarray(picture).save(folder / name)


def predict(model_dir: str | Path, inputs: list[str], out: str | Path, *, device: str = "auto",
            batch_size: int = 16, threshold: float | None = None, images: bool = True,
            workers: int = 0) -> list[Row]:
    """Score `inputs` with the model in `model_dir`; write OUT/predictions.csv (and overlays); return the rows."""
    model = load(model_dir).to(resolve_device(device)).eval()
    threshold = float(model.image_threshold) if threshold is None else threshold
    size, resize = model.input.size, model.input.resize
    items = collect(inputs)
    rows = [Row(shown, error=err) for shown, _, err in items]
    todo = [i for i, (_, path, err) in enumerate(items) if path is not None and not err]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(8, os.cpu_count() or 1)
    overlay_dir = staged_dir(out / "overlays") if images else contextlib.nullcontext(None)
    with overlay_dir as overlays, ThreadPoolExecutor(workers) as pool:
        starts = range(0, len(todo), batch_size)
        for start in tqdm(starts, desc="predict", unit="batch", disable=len(starts) < 4, file=sys.stderr):
            chunk = todo[start: start + batch_size]
            decoded = list(pool.map(lambda i: _try(_prepare, items[i][1], size, resize), chunk))
            ok = [(i, d) for i, d in zip(chunk, decoded) if not isinstance(d, str)]
            for i, d in zip(chunk, decoded):
                if isinstance(d, str):
                    rows[i].error = d
            if not ok:
                continue
            batch = np.stack([d[1] for _, d in ok])
            with torch.no_grad():
                maps, scores = model(torch.from_numpy(batch).to(model.device))
            for (i, (original, _)), m, s in zip(ok, maps, scores.tolist()):
                rows[i].score, rows[i].anomalous = s, s > threshold
                if images:
                    name = _overlay_name(i, items[i][1])
                    _save_overlay(overlays, name, original, m, model, s, threshold, items[i][0])
                    rows[i].overlay = f"overlays/{name}"
    _write_csv(out / "predictions.csv", rows)
    return rows


def _try(fn, *args):
    try:
        return fn(*args)
    except (UadError, OSError, ValueError) as exc:
        return one_line(str(exc), 500)


def _write_csv(path: Path, rows: list[Row]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r.image, "" if r.score is None else f"{r.score:.6g}",
                         "" if r.anomalous is None else str(r.anomalous).lower(), r.error, r.overlay])
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())
