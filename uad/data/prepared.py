"""The model-ready cache of one category: decoded once, resized, stored as arrays.

`prepare_category` decodes every image of an MVTec-layout folder (in parallel
threads: Pillow releases the GIL while decoding and resizing), checks each
image and mask, and writes uint8 arrays plus a JSON index. `load_prepared`
memory-maps them back. Stages downstream never touch the original files.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from uad.artifacts import staged_dir
from uad.errors import UadError
from uad.data.layout import LayoutError, Sample, scan_category
from uad.resources import check_room

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
MASK_THRESHOLD = 128  # 8-bit masks are binarised at >= 128 (MVTec: 0/255; MTD: grey edges); 0/1 masks at 1
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


def _decoded(path: Path, shown: Path) -> Image.Image:
    """The fully decoded image (truncated files fail here, not later); errors name `shown`."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy() if im.mode != "P" else im.convert("RGBA" if "transparency" in im.info else "RGB")
    except FileNotFoundError:
        raise DataError(f"{shown}: file not found") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{shown}: image too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise DataError(f"{shown}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{shown}: cannot decode image ({exc})") from None


SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_image(path: Path, shown: Path | None = None) -> tuple[Image.Image, int]:
    """An image as 8-bit RGB, and the bit depth it was stored with (8 or 16).

    16-bit images are scaled by 255/65535, the same for every image, so that brightness keeps its
    meaning across images and next to 8-bit ones (no per-image stretching).
    """
    shown = shown or path
    im = _decoded(path, shown)
    if im.mode in SIXTEEN_BIT:
        arr = np.asarray(im).astype(np.int64)
        if arr.min() < 0 or arr.max() > 65535:
            raise DataError(f"{shown}: 32-bit integer image with values outside 0..65535; save it as 8- or "
                            f"16-bit")
        return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB"), 16
    if im.mode == "F":
        raise DataError(f"{shown}: 32-bit floating-point image; save it as 8- or 16-bit")
    return im.convert("RGB"), 8


def read_mask(path: Path, shown: Path | None = None) -> np.ndarray:
    """The defect pixels (bool, native size) of a mask in any of the encodings datasets use.

    Read: 0/255 (and anti-aliased grey, binarised at >= 128 as MVTec and MTD need), 0/1 label
    masks, bilevel, 16-bit (0/65535, threshold 32768), and coloured masks (defect = any channel
    >= 128, e.g. red on black; palette masks through their colours). Refused with the values
    found: anything whose non-zero values all lie below the threshold (other than 0/1), such as
    multi-class label masks, and floating-point masks other than 0/1.
    """
    shown = shown or path
    im = _decoded(path, shown)
    if im.mode == "1":
        return np.asarray(im, dtype=bool)
    if im.mode in ("LA", "PA"):
        im = im.convert("L")
    if im.mode in SIXTEEN_BIT or im.mode in ("L", "F"):
        arr = np.asarray(im)
        found = "grey"
    else:
        rgb = np.asarray(im.convert("RGB"))
        grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        arr = rgb[..., 0] if grey else rgb.max(axis=2)
        found = "grey" if grey else "colour"
    top = float(arr.max()) if arr.size else 0.0
    if im.mode == "F" and not np.isin(arr, (0.0, 1.0)).all():
        raise DataError(f"{shown}: floating-point mask with values other than 0 and 1 (up to {top:g}); "
                        f"save it as 0/255 or 0/1")
    if top <= 1:  # empty, or a 0/1 label mask
        return arr >= 1
    threshold = MASK_THRESHOLD if top <= 255 else 32768
    if top < threshold:
        values = np.unique(arr)
        listed = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise DataError(f"{shown}: {found} mask with values {listed}: not a 0/255 or 0/1 mask (defect pixels "
                        f"must be >= {threshold}, or exactly 1 in a 0/1 mask)")
    return arr >= threshold


def _load_sample(sample: Sample, size: int, resample: Image.Resampling,
                 shown: Callable[[Path], Path]) -> tuple[np.ndarray, np.ndarray | None, int]:
    image, depth = read_image(sample.image, shown(sample.image))
    if min(image.size) < 2:
        raise DataError(f"{shown(sample.image)}: image is empty ({image.size[0]}x{image.size[1]} pixels)")
    mask_arr = None
    if sample.mask is not None:
        mask = read_mask(sample.mask, shown(sample.mask))
        if mask.shape[::-1] != image.size:
            raise DataError(f"{shown(sample.mask)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{sample.image.name} is {image.size[0]}x{image.size[1]}")
        binary = Image.fromarray(mask.astype(np.uint8) * 255)
        mask_arr = (np.asarray(binary.resize((size, size), Image.Resampling.NEAREST)) > 0).astype(np.uint8)
    img_arr = np.asarray(image.resize((size, size), resample), dtype=np.uint8)
    return img_arr, mask_arr, depth


def _available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _decode_all(samples: list[Sample], size: int, resample: Image.Resampling, workers: int, desc: str,
                shown: Callable[[Path], Path]) -> tuple[np.ndarray, np.ndarray, set[int]]:
    images = np.empty((len(samples), size, size, 3), np.uint8)
    masks = np.zeros((len(samples), size, size), np.uint8)
    depths: set[int] = set()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda s: _load_sample(s, size, resample, shown), samples)
        for i, (img, mask, depth) in enumerate(tqdm(results, total=len(samples), desc=desc, unit="img",
                                                    leave=False, mininterval=1.0)):
            images[i] = img
            depths.add(depth)
            if mask is not None:
                masks[i] = mask
    return images, masks, depths


def _check_training_images(images: np.ndarray, folder: Path) -> None:
    """Refuse training images that carry nothing to learn; warn when they are all one image."""
    flat = images.reshape(len(images), -1)
    if (flat.max(1) == flat.min(1)).all():
        raise DataError(f"{folder}: every training image is one flat colour; the model would learn nothing "
                        f"(check the files or the resize)")
    if len(images) > 1 and (flat == flat[:1]).all():
        print(f"warning: {folder}: all {len(images)} training images are identical after resizing",
              file=sys.stderr)


def prepare_category(src: str | Path, dst: str | Path, *, image_size: int, resize: str = "bilinear",
                     workers: int = 0) -> dict:
    """Validate and decode one category folder into the cache at `dst`; returns the index."""
    src, dst = Path(src), Path(dst)
    layout = scan_category(src)
    shown = layout.shown
    n_train, n_test = len(layout.train), len(layout.test)
    need = (n_train * 3 + n_test * 4) * image_size * image_size
    check_room(need, dst.parent, f"prepare: {n_train + n_test} images at {image_size}x{image_size}",
               "lower image_size")
    workers = workers or _available_cpus()
    resample = RESAMPLING[resize]
    train_images, _, depths = _decode_all(layout.train, image_size, resample, workers, f"{src.name} train", shown)
    _check_training_images(train_images, shown(src / "train" / "good"))
    test_images, test_masks, test_depths = _decode_all(layout.test, image_size, resample, workers,
                                                       f"{src.name} test", shown)
    if len(depths | test_depths) > 1:
        print(f"warning: {shown(src)}: mixes 8-bit and 16-bit images; 16-bit ones are scaled by 255/65535",
              file=sys.stderr)
    if not test_masks.any():
        raise DataError(f"{shown(src / 'ground_truth')}: no mask holds a defect pixel at {image_size}x{image_size}; "
                        f"pixel metrics need at least one")
    for sample, mask in zip(layout.test, test_masks):
        if sample.label and not mask.any():
            print(f"warning: {shown(sample.mask)}: mask is empty at {image_size}x{image_size}; the image still "
                  f"counts as defective for image AUROC", file=sys.stderr)
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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{path}: damaged ({exc}); rerun the prepare stage") from None
    if index.get("format") != FORMAT_VERSION:
        raise LayoutError(f"{path}: prepared with format {index.get('format')}, expected {FORMAT_VERSION}; "
                          f"rerun prepare")
    return index


def _array(path: Path, rows: int) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise LayoutError(f"{path}: missing or damaged ({exc}); rerun the prepare stage") from None
    if len(array) != rows:
        raise LayoutError(f"{path}: {len(array)} entries, the index lists {rows}; rerun the prepare stage")
    return array


def load_split(root: str | Path, split: str) -> Split:
    """Memory-map the `train` or `test` split of a prepared category."""
    root = Path(root)
    index = load_index(root)
    if split == "train":
        n = len(index["train"])
        images = _array(root / "train_images.npy", n)
        return Split(images, None, np.zeros(n, np.int64), list(index["train"]), ["good"] * n)
    if split != "test":
        raise ValueError(f"unknown split {split!r}")
    entries = index["test"]
    images = _array(root / "test_images.npy", len(entries))
    masks = _array(root / "test_masks.npy", len(entries))
    return Split(images, masks, np.array([e["label"] for e in entries], np.int64),
                 [e["name"] for e in entries], [e["defect"] for e in entries])
