"""Magnetic Tile Defects (Huang, Qiu, Yuan; The Visual Computer 2020) in MVTec layout.

The public archive holds `MT_<Type>/Imgs/<stem>.jpg` photos, each with a
`<stem>.png` mask. Converted to one category, `magnetic_tile`: the defect-free
`MT_Free` images in sorted file-name order go to test when their index i has
i % 5 == 0 and to train otherwise (761 train, 191 test of the official 952);
every defective image goes to test/<type>/, its mask binarised as `read_mask` does
(MTD's grey anti-aliased edges at >= 128).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from uad.data.layout import LayoutError
from uad.data.prepared import read_mask

CATEGORY = "magnetic_tile"
DEFECTS = {"MT_Blowhole": "blowhole", "MT_Break": "break", "MT_Crack": "crack", "MT_Fray": "fray",
           "MT_Uneven": "uneven"}
TEST_EVERY = 5


def find_root(folder: Path) -> Path:
    """The folder holding MT_Free (the archive nests it one level down, a checkout does not)."""
    for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
        if (candidate / "MT_Free").is_dir():
            return candidate
    raise LayoutError(f"{folder}: no MT_Free/ folder here or one level down; not a Magnetic Tile Defects copy")


def _images(folder: Path) -> list[Path]:
    imgs = folder / "Imgs"
    if not imgs.is_dir():
        raise LayoutError(f"{imgs}: missing (expected MT_<Type>/Imgs/*.jpg)")
    files = sorted(imgs.glob("*.jpg"))
    if not files:
        raise LayoutError(f"{imgs}: no .jpg images")
    return files


def _binary_mask(src: Path, dest: Path) -> None:
    mask = read_mask(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(dest)


def convert(source: str | Path, dest: str | Path) -> dict[str, int]:
    """Write `dest/magnetic_tile/` in MVTec layout from an MTD folder; returns image counts."""
    root = find_root(Path(source))
    out = Path(dest) / CATEGORY
    counts: dict[str, int] = {"train": 0, "test_good": 0}
    for i, img in enumerate(_images(root / "MT_Free")):
        split = "test" if i % TEST_EVERY == 0 else "train"
        target = out / split / "good" / img.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(img, target)
        counts["train" if split == "train" else "test_good"] += 1
    for folder, defect in DEFECTS.items():
        if not (root / folder).is_dir():
            raise LayoutError(f"{root / folder}: missing defect folder")
        for img in _images(root / folder):
            mask = img.with_suffix(".png")
            if not mask.is_file():
                raise LayoutError(f"{img}: defective image has no mask (expected {mask})")
            target = out / "test" / defect / img.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(img, target)
            _binary_mask(mask, out / "ground_truth" / defect / f"{img.stem}_mask.png")
            counts[defect] = counts.get(defect, 0) + 1
    return counts
