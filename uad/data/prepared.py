"""The model-ready cache of one category: decoded once, resized, stored as arrays.

`prepare_category` decodes every image of an MVTec-layout folder (in parallel
threads: Pillow releases the GIL while decoding and resizing), checks each
image and mask, and writes uint8 arrays plus a JSON index. `load_prepared`
memory-maps them back. Stages downstream never touch the original files.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from uad.artifacts import staged_dir
from uad.errors import UadError
from uad.data.layout import LayoutError, Sample, scan_category

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
MASK_THRESHOLD = 128  # masks are binarised at >= 128 (MVTec: 0/255; MTD: grey edges)
FORMAT_VERSION = 1


class DataError(UadError, ValueError):
    """An image or mask that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, S, S, 3) uint8
    masks: np.ndarray | None  # (N, S, S) uint8 in {0, 1}; None for the train split
    labels: np.ndarray  # (N,) int64, 1 = defective
    names: list[str]
    defects: list[str]

    def __len__(self) -> int:
        return len(self.names)


def _open(path: Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()  # force a full decode: truncated files fail here, not later
            if mode == "RGB" and im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-6) * 255
                im = Image.fromarray(arr.astype(np.uint8))
            return im.convert(mode)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None


def _load_sample(sample: Sample, size: int, resample: Image.Resampling) -> tuple[np.ndarray, np.ndarray | None]:
    image = _open(sample.image, "RGB")
    if min(image.size) < 2:
        raise DataError(f"{sample.image}: image is empty ({image.size[0]}x{image.size[1]} pixels)")
    mask_arr = None
    if sample.mask is not None:
        mask = _open(sample.mask, "L")
        if mask.size != image.size:
            raise DataError(f"{sample.mask}: mask is {mask.size[0]}x{mask.size[1]} but its image "
                            f"{sample.image.name} is {image.size[0]}x{image.size[1]}")
        binary = Image.fromarray(((np.asarray(mask) >= MASK_THRESHOLD) * 255).astype(np.uint8))
        mask_arr = (np.asarray(binary.resize((size, size), Image.Resampling.NEAREST)) > 0).astype(np.uint8)
    img_arr = np.asarray(image.resize((size, size), resample), dtype=np.uint8)
    return img_arr, mask_arr


def _available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _decode_all(samples: list[Sample], size: int, resample: Image.Resampling, workers: int,
                desc: str) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(samples), size, size, 3), np.uint8)
    masks = np.zeros((len(samples), size, size), np.uint8)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda s: _load_sample(s, size, resample), samples)
        for i, (img, mask) in enumerate(tqdm(results, total=len(samples), desc=desc, unit="img",
                                             leave=False, mininterval=1.0)):
            images[i] = img
            if mask is not None:
                masks[i] = mask
    return images, masks


def prepare_category(src: str | Path, dst: str | Path, *, image_size: int, resize: str = "bilinear",
                     workers: int = 0) -> dict:
    """Validate and decode one category folder into the cache at `dst`; returns the index."""
    src, dst = Path(src), Path(dst)
    layout = scan_category(src)
    workers = workers or _available_cpus()
    resample = RESAMPLING[resize]
    train_images, _ = _decode_all(layout.train, image_size, resample, workers, f"{src.name} train")
    test_images, test_masks = _decode_all(layout.test, image_size, resample, workers, f"{src.name} test")
    for sample, mask in zip(layout.test, test_masks):
        if sample.label and not mask.any():
            print(f"warning: {sample.mask}: mask is empty at {image_size}x{image_size}; the image still "
                  f"counts as defective for image AUROC")
    index = {
        "format": FORMAT_VERSION,
        "category": src.name,
        "image_size": image_size,
        "resize": resize,
        "defects": layout.defects,
        "train": [s.name for s in layout.train],
        "test": [{"name": s.name, "defect": s.defect, "label": s.label} for s in layout.test],
    }
    with staged_dir(dst) as tmp:  # a failed run leaves no half-written cache
        np.save(tmp / "train_images.npy", train_images)
        np.save(tmp / "test_images.npy", test_images)
        np.save(tmp / "test_masks.npy", test_masks)
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
    return index


def load_index(root: str | Path) -> dict:
    path = Path(root) / "index.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise LayoutError(f"{path}: prepared data missing; run the prepare stage first") from None
    if index.get("format") != FORMAT_VERSION:
        raise LayoutError(f"{path}: prepared with format {index.get('format')}, expected {FORMAT_VERSION}; "
                          f"rerun prepare")
    return index


def load_split(root: str | Path, split: str) -> Split:
    """Memory-map the `train` or `test` split of a prepared category."""
    root = Path(root)
    index = load_index(root)
    images = np.load(root / f"{split}_images.npy", mmap_mode="r")
    if split == "train":
        n = len(index["train"])
        return Split(images, None, np.zeros(n, np.int64), list(index["train"]), ["good"] * n)
    if split != "test":
        raise ValueError(f"unknown split {split!r}")
    entries = index["test"]
    masks = np.load(root / "test_masks.npy", mmap_mode="r")
    return Split(images, masks, np.array([e["label"] for e in entries], np.int64),
                 [e["name"] for e in entries], [e["defect"] for e in entries])
